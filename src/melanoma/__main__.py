from melanoma.cli import main

raise SystemExit(main())
