"""cefmp4: stream growing recordings into S3 while they are written, on an event log in Redis.

The installed packages are `cefmp4.common` (what every role shares), `cefmp4.producer`,
`cefmp4.consumer` (every reader of the log), and this package's own modules, which wire the
roles into processes and make the `cefmp4` command line. See ARCHITECTURE.md.
"""
