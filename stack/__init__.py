"""Local stacks for one machine: `make run` (embedded: a private Redis, SQLite, one web worker,
the matcher). Each process's output is prefixed with its name; Ctrl-C stops them all."""
