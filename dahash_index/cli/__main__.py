from dahash_index.cli import run

run()
