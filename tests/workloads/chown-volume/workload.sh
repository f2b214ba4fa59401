# Hands a file on a volume to the service's user, as entrypoints do with data directories.
rm -f /data/owned
touch /data/owned
chown 1000:1000 /data/owned
[ "$(stat -c %u:%g /data/owned)" = 1000:1000 ]
