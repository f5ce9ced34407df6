from specprof.ui.cli import main

main()
