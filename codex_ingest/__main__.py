from codex_ingest.cli import main

raise SystemExit(main())
