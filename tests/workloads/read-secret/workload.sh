# Root reads a 0400 file owned by uid 1000 (from the image): DAC_READ_SEARCH or DAC_OVERRIDE.
[ "$(cat /fixtures/secret-of-1000)" = capprof-secret ]
