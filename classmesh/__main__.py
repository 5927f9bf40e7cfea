from classmesh.cli import main

raise SystemExit(main())
