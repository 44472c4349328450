"""`python -m bot.cli`: the same as the `dpor-bot` console script."""

from bot.cli import main

main()
