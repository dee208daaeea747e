# Short names for the project's scripts; they do the work and can be run directly.
#   make setup                   .venv with the pins of pyproject.toml (scripts/setup.sh)
#   make test [ARGS=...]         lint and the test suite (scripts/test.sh), e.g. ARGS="-m 'not slow'"
#   make services-up             local S3 store (moto), MLflow server, Ray head on 127.0.0.1;
#                                then: source .services/env.sh  (infra/local/README.md)
#   make services-status         report them
#   make services-add-node [ARGS=...] one more Ray node on 127.0.0.1 joining the head,
#                                e.g. ARGS="--num-cpus 2 --hide /data" (infra/local/README.md)
#   make services-down           stop them
#   make demo [ARGS=...]         clipsr demo (scripts/demo.sh: local Ray, embedded MLflow, disk)
#   make demo-services [ARGS=..] clipsr demo on the local services (starts them first)
#   make image                   docker image of infra/docker/Dockerfile, tagged clipsr:VERSION
SHELL := /bin/bash
ARGS ?=
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
SERVICES_ENV := $(or $(CLIPSR_SERVICES_DIR),.services)/env.sh

.PHONY: help setup test services-up services-down services-status services-add-node demo \
	demo-services image

help:
	@sed -n 's/^#   //p' Makefile

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh $(ARGS)

services-up: setup
	bash infra/local/services.sh up

services-down:
	bash infra/local/services.sh down

services-status:
	bash infra/local/services.sh status

services-add-node:
	bash infra/local/services.sh add-node $(ARGS)

demo:
	bash scripts/demo.sh $(ARGS)

# The demo on the local services: shards and checkpoints on the S3 store, runs and registry on
# the MLflow server, jobs on the Ray head. moto keeps objects in memory, so it starts afresh.
demo-services: services-up
	source $(SERVICES_ENV) && bash scripts/demo.sh workdir=runs/demo-services \
	    storage=s3://$$CLIPSR_S3_BUCKET/demo fresh=true $(ARGS)

image:
	docker build -f infra/docker/Dockerfile -t clipsr:$(VERSION) .
