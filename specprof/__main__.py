from specprof.cli import main

main()
