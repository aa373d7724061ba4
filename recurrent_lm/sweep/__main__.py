from recurrent_lm.sweep.cli import main

raise SystemExit(main())
