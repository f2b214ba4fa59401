# Root changes the mode of a file owned by uid 1000 (from the image): FOWNER.
chmod 0600 /fixtures/owned-by-1000
[ "$(stat -c %a /fixtures/owned-by-1000)" = 600 ]
