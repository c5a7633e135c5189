# The two commands of the README, plus the ones developers use.
.PHONY: setup demo test bench clean

setup:
	bash ci/setup.sh

demo: setup
	.venv/bin/mirrorctl demo

test: setup
	bash ci/test.sh

bench: setup
	.venv/bin/python -m pytest bench --benchmark-only -p no:cacheprovider

clean:
	-.venv/bin/mirrorctl demo down
	rm -rf .venv target
