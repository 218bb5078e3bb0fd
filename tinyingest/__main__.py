from tinyingest.cli import main

raise SystemExit(main())
