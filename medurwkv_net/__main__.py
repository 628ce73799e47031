"""``python -m medurwkv_net <command> ...``: see :mod:`medurwkv_net.cli`."""

from medurwkv_net.cli import main

if __name__ == "__main__":
    main()
