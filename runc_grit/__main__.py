from runc_grit.entry import main

raise SystemExit(main())
