module github.com/probe-agent/probe-agent/bench

go 1.26.8

replace github.com/probe-agent/probe-agent => ../

replace (
	k8s.io/api => k8s.io/api v0.33.4
	k8s.io/apiextensions-apiserver => k8s.io/apiextensions-apiserver v0.33.4
	k8s.io/apimachinery => k8s.io/apimachinery v0.33.4
	k8s.io/apiserver => k8s.io/apiserver v0.33.4
	k8s.io/client-go => k8s.io/client-go v0.33.4
	k8s.io/cloud-provider => k8s.io/cloud-provider v0.33.4
	k8s.io/cluster-bootstrap => k8s.io/cluster-bootstrap v0.33.4
	k8s.io/code-generator => k8s.io/code-generator v0.33.4
	k8s.io/component-base => k8s.io/component-base v0.33.4
	k8s.io/component-helpers => k8s.io/component-helpers v0.33.4
	k8s.io/controller-manager => k8s.io/controller-manager v0.33.4
	k8s.io/cri-api => k8s.io/cri-api v0.33.4
	k8s.io/cri-client => k8s.io/cri-client v0.33.4
	k8s.io/csi-translation-lib => k8s.io/csi-translation-lib v0.33.4
	k8s.io/dynamic-resource-allocation => k8s.io/dynamic-resource-allocation v0.33.4
	k8s.io/endpointslice => k8s.io/endpointslice v0.33.4
	k8s.io/externaljwt => k8s.io/externaljwt v0.33.4
	k8s.io/kms => k8s.io/kms v0.33.4
	k8s.io/kube-aggregator => k8s.io/kube-aggregator v0.33.4
	k8s.io/kube-controller-manager => k8s.io/kube-controller-manager v0.33.4
	k8s.io/kube-proxy => k8s.io/kube-proxy v0.33.4
	k8s.io/kube-scheduler => k8s.io/kube-scheduler v0.33.4
	k8s.io/kubectl => k8s.io/kubectl v0.33.4
	k8s.io/kubelet => k8s.io/kubelet v0.33.4
	k8s.io/metrics => k8s.io/metrics v0.33.4
	k8s.io/mount-utils => k8s.io/mount-utils v0.33.4
	k8s.io/pod-security-admission => k8s.io/pod-security-admission v0.33.4
	k8s.io/sample-apiserver => k8s.io/sample-apiserver v0.33.4
	k8s.io/sample-cli-plugin => k8s.io/sample-cli-plugin v0.33.4
	k8s.io/sample-controller => k8s.io/sample-controller v0.33.4
)

require (
	github.com/jonboulle/clockwork v0.5.0
	github.com/probe-agent/probe-agent v0.0.0-00010101000000-000000000000
	github.com/prometheus/blackbox_exporter v0.28.0
	github.com/prometheus/client_golang v1.25.0
	k8s.io/kubernetes v1.33.4
)

require (
	cel.dev/expr v0.25.3 // indirect
	github.com/alecthomas/units v0.0.0-20240927000941-0f3dac36c52b // indirect
	github.com/andybalholm/brotli v1.2.0 // indirect
	github.com/antlr4-go/antlr/v4 v4.13.1 // indirect
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/fxamacker/cbor/v2 v2.9.1 // indirect
	github.com/go-logr/logr v1.4.4 // indirect
	github.com/gogo/protobuf v1.3.2 // indirect
	github.com/golang-jwt/jwt/v5 v5.3.1 // indirect
	github.com/google/cel-go v0.26.1 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/jpillora/backoff v1.0.0 // indirect
	github.com/json-iterator/go v1.1.12 // indirect
	github.com/mattn/go-shellwords v1.0.16 // indirect
	github.com/miekg/dns v1.1.68 // indirect
	github.com/modern-go/concurrent v0.0.0-20180306012644-bacd9c7ef1dd // indirect
	github.com/modern-go/reflect2 v1.0.3-0.20250322232337-35a7c28c31ee // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/mwitkow/go-conntrack v0.0.0-20190716064945-2f068394615f // indirect
	github.com/opencontainers/runtime-spec v1.2.0 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	github.com/quic-go/qpack v0.6.0 // indirect
	github.com/quic-go/quic-go v0.57.1 // indirect
	github.com/stoewer/go-strcase v1.3.0 // indirect
	github.com/x448/float16 v0.8.4 // indirect
	go.uber.org/multierr v1.11.0 // indirect
	go.uber.org/zap v1.28.0 // indirect
	go.yaml.in/yaml/v2 v2.4.4 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/crypto v0.57.0 // indirect
	golang.org/x/exp v0.0.0-20240719175910-8a7402abbf56 // indirect
	golang.org/x/mod v0.41.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/oauth2 v0.37.0 // indirect
	golang.org/x/sync v0.25.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	golang.org/x/tools v0.49.0 // indirect
	google.golang.org/genproto/googleapis/api v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	google.golang.org/grpc v1.85.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
	gopkg.in/inf.v0 v0.9.1 // indirect
	k8s.io/api v0.37.2 // indirect
	k8s.io/apimachinery v0.37.2 // indirect
	k8s.io/component-base v0.0.0 // indirect
	k8s.io/klog/v2 v2.140.0 // indirect
	k8s.io/utils v0.0.0-20260626114624-be93311217bd // indirect
	sigs.k8s.io/json v0.0.0-20250730193827-2d320260d730 // indirect
	sigs.k8s.io/randfill v1.0.0 // indirect
	sigs.k8s.io/structured-merge-diff/v4 v4.6.0 // indirect
	sigs.k8s.io/yaml v1.6.0 // indirect
)
