ci:
	make test

run:
	make run
