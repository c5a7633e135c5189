# The two commands of the README, plus the ones developers use.
.PHONY: setup demo test bench bench-short lint clean

setup:
	bash ci/setup.sh

demo: setup
	.venv/bin/mirrorctl demo

test: setup
	bash ci/test.sh

bench: setup
	.venv/bin/python -m pytest bench --benchmark-only -p no:cacheprovider

lint: setup
	bash ci/test.sh --co -q >/dev/null

clean:
	-.venv/bin/mirrorctl demo down
	rm -rf .venv target
