import sys

try:  # Ctrl-C while the command's modules are imported: one line, as in the command itself
    from bidirect.cli import main
except KeyboardInterrupt:
    print("error: interrupted while starting; nothing was done")
    sys.exit(130)

sys.exit(main())
