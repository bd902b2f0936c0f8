from codex_ingest.cli import main

# Guarded: worker processes are spawned, and spawning re-imports __main__.
if __name__ == "__main__":
    raise SystemExit(main())
