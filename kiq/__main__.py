from kiq.cli import main

main()
