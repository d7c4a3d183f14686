from fabguard.cli import main

raise SystemExit(main())
