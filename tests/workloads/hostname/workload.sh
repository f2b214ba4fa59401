# Renames its host at run time: SYS_ADMIN, better done with Compose's `hostname:`.
hostname capprof-renamed
[ "$(hostname)" = capprof-renamed ]
