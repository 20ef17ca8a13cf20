from pyfs.cli import mkfs_main

raise SystemExit(mkfs_main())
