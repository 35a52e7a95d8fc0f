from photongap.cli import main

main()
