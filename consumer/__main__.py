import sys

from cefmp4.cli import main

sys.exit(main(["consumer", *sys.argv[1:]]))
