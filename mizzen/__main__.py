from mizzen.cli.main import main

raise SystemExit(main())
