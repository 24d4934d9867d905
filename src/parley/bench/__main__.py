import sys

from parley.bench import main

raise SystemExit(main(sys.argv[1:]))
