from dahash_index.cli import main

main()
