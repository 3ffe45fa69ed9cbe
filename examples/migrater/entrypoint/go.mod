module gamezone.dev/examples/migrater/entrypoint

go 1.24
