GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# NVML 13 headers mark calls the agent still uses as deprecated; keep cgo logs readable.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations
# The containerd client links Go's plugin package, which makes the linker bind every
# symbol at start; go-nvml's are bound only when the driver's library is opened, so
# NVML is built in only with containerd's plugin loader left out (gpu/nvml/stub.go).
export GOFLAGS := $(strip $(GOFLAGS) -tags=no_dynamic_plugins)

DOCKER   ?= docker
IMAGE    ?= probe-agent:$(VERSION)

.PHONY: all build run test lint unit deploy-check test-k8s test-node fuzz-smoke fuzz bench bench-quick image clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/probe-agent ./cmd/probe-agent
	$(GO) build -o bin/sample-server ./cmd/sample-server

## run: start the agent on the process runtime with the example service (Ctrl-C stops it).
run: build
	./bin/probe-agent run --config testdata/service.json --log-format console --state-dir bin/state

## test: every check and test: formatting, vet, staticcheck, tidy modules, race tests, tests without cgo, the deployment checks, the Kubernetes end-to-end tests, fuzz smoke, both builds.
test: lint unit deploy-check test-k8s fuzz-smoke
	CGO_ENABLED=0 $(GO) build ./...
	CGO_ENABLED=1 $(GO) build ./...

lint:
	./hack/check-tracked-files
	@unformatted=$$(gofmt -l .); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	$(GO) mod tidy -diff
	cd bench && $(GO) vet ./... && $(GO) mod tidy -diff
	cd deploy && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./... && $(GO) mod tidy -diff
	cd e2e && $(GO) vet ./... && $(GO) mod tidy -diff

unit:
	$(GO) test -race -count=1 ./...
	CGO_ENABLED=0 $(GO) test -count=1 ./...
	$(GO) test -count=1 -run 'Burst' ./prober/pool
	cd bench && $(GO) test -count=1 ./...

## deploy-check: the Dockerfile's build, the Kubernetes manifests, alert rules and dashboard (module deploy/).
deploy-check:
	cd deploy && $(GO) test -count=1 ./...

## test-k8s: module e2e/: the agent against a real kube-apiserver, etcd, RBAC, the shipped admission policy and the EndpointSlice controller (TestKubernetes), and the node suite (TestNode); root, containerd, CNI plugins and iptables, or they are skipped (with CI set, they fail).
test-k8s:
	cd e2e && $(GO) test -count=1 -timeout 30m ./...

## test-node: the node suite alone: a real kubelet on a private containerd with bridge CNI, probe-agent deployed from deploy/kubernetes.
test-node:
	cd e2e && $(GO) test -count=1 -timeout 20m -run TestNode -v ./...

# Budgets in executions, not seconds: Go 1.26's fuzz coordinator can fail a run with
# "context deadline exceeded" when a -fuzztime duration ends (go.dev/issue/75804).
fuzz-smoke:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 300000x ./service
	$(GO) test -run '^$$' -fuzz '^FuzzEASFields$$' -fuzztime 200000x ./service
	$(GO) test -run '^$$' -fuzz '^FuzzFromSpec$$' -fuzztime 100000x ./gpu
	$(GO) test -run '^$$' -fuzz '^FuzzParseXIDList$$' -fuzztime 50000x ./gpu
	$(GO) test -run '^$$' -fuzz '^FuzzRunnerOutput$$' -fuzztime 100000x ./runtime/containerd

## fuzz: longer fuzzing runs of the parsers (service.json, OCI specs' GPU requests, XID lists, the exec runner's output).
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 5m ./service
	$(GO) test -run '^$$' -fuzz '^FuzzEASFields$$' -fuzztime 2m ./service
	$(GO) test -run '^$$' -fuzz '^FuzzFromSpec$$' -fuzztime 2m ./gpu
	$(GO) test -run '^$$' -fuzz '^FuzzParseXIDList$$' -fuzztime 1m ./gpu
	$(GO) test -run '^$$' -fuzz '^FuzzRunnerOutput$$' -fuzztime 1m ./runtime/containerd

## bench: the full side-by-side benchmark; writes bench/results.json and docs/benchmarks.md.
bench:
	cd bench && $(GO) run ./cmd/bench -out results.json
	cd bench && $(GO) run ./cmd/report -in results.json -out ../docs/benchmarks.md

## bench-quick: every benchmark scenario, shortened; writes bench/results.json.
bench-quick:
	cd bench && $(GO) build ./... && $(GO) run ./cmd/bench -quick -out results.json

## image: the container image from deploy/Dockerfile (needs docker, or DOCKER=podman).
image:
	@command -v $(DOCKER) >/dev/null || { echo "make image: $(DOCKER) not found; set DOCKER=podman or buildah bud"; exit 1; }
	$(DOCKER) build -f deploy/Dockerfile --build-arg VERSION=$(VERSION) -t $(IMAGE) .

clean:
	rm -rf bin
