from bench.read_side.run import main

raise SystemExit(main())
