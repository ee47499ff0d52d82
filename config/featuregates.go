package config

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/version"
	clientfeatures "k8s.io/client-go/features"
	"k8s.io/component-base/featuregate"
)

// kubeProxyVersion is the kube-proxy release switchyard follows: the one its feature gates
// were read from (zz_generated.featuregates.go).
var kubeProxyVersion = version.MustParse(kubeProxyGatesSource)

// newFeatureGate makes kube-proxy's feature gate: every gate kube-proxy knows (kube-proxy
// registers all of Kubernetes', client-go's and component-base's), with its specs and
// dependencies, at kube-proxy's version. Setting it from --feature-gates or featureGates
// therefore fails, and warns, exactly where kube-proxy's does: an unknown gate, a value a
// gate is locked to the opposite of, a gate whose dependencies are off.
func newFeatureGate() featuregate.MutableVersionedFeatureGate {
	gate := featuregate.NewVersionedFeatureGate(version.MajorMinor(kubeProxyVersion.Major(), kubeProxyVersion.Minor()))
	if err := gate.AddVersioned(kubeProxyGates); err != nil {
		panic(fmt.Sprintf("registering kube-proxy's feature gates: %v", err))
	}
	if err := gate.AddDependencies(kubeProxyGateDependencies); err != nil {
		panic(fmt.Sprintf("registering kube-proxy's feature gate dependencies: %v", err))
	}
	return gate
}

// GateUse is what a feature gate changes in kube-proxy on Linux, and what switchyard does
// about it. Every gate of kube-proxy's not listed in Gates changes nothing in kube-proxy
// (they are other components' gates, which kube-proxy registers all of).
type GateUse struct {
	Gate featuregate.Feature
	// KubeProxy is what the gate changes in kube-proxy.
	KubeProxy string
	// Switchyard says how switchyard honours it.
	Switchyard string
	// Refused, when not empty, is why switchyard refuses the gate enabled (it is off by
	// default).
	Refused string
	// Locked is set when kube-proxy v1.35 does not let the gate be changed.
	Locked bool
}

// honouredLogs and honouredClient are what switchyard does with the gates read by the
// libraries it shares with kube-proxy.
const (
	honouredLogs   = "Honoured: switchyard's logging is kube-proxy's (component-base's logs API, given the gates)."
	honouredClient = "Honoured: switchyard's client-go reads kube-proxy's gates, as kube-proxy's does (`Parsed.Apply`)."
)

// Gates are the feature gates that change kube-proxy's behaviour on Linux: those read by
// the code kube-proxy v1.35 runs (cmd/kube-proxy, pkg/proxy, and the client-go and
// component-base packages it calls), found by reading every Enabled call in the packages
// it links.
var Gates = []GateUse{
	{Gate: "LoggingAlphaOptions", KubeProxy: "Allows the alpha logging options: split streams and info buffers.", Switchyard: honouredLogs},
	{Gate: "LoggingBetaOptions", KubeProxy: "Allows the json log format.", Switchyard: honouredLogs},
	{Gate: "ContextualLogging", KubeProxy: "Contextual logging in klog.", Switchyard: honouredLogs},
	{Gate: "WatchListClient", KubeProxy: "client-go's informers list by streaming a watch.", Switchyard: honouredClient},
	{Gate: "InformerResourceVersion", KubeProxy: "client-go's informers track the last resource version synced.", Switchyard: honouredClient},
	{Gate: "InOrderInformers", KubeProxy: "client-go's informers deliver events in order.", Switchyard: honouredClient},
	{Gate: "InOrderInformersBatchProcess", KubeProxy: "client-go's informers deliver events in batches.", Switchyard: honouredClient},
	{Gate: "ClientsAllowCBOR", KubeProxy: "client-go may speak CBOR.", Switchyard: honouredClient},
	{Gate: "ClientsPreferCBOR", KubeProxy: "client-go prefers CBOR.", Switchyard: honouredClient},
	{Gate: "ComponentFlagz", KubeProxy: "Serves /flagz on the metrics server.", Refused: "switchyard serves no /flagz"},
	{Gate: "ComponentStatusz", KubeProxy: "Serves /statusz on the metrics server.", Refused: "switchyard serves no /statusz"},
	{Gate: "MultiCIDRServiceAllocator", KubeProxy: "Watches ServiceCIDRs.", Locked: true},
	{Gate: "PreferSameTrafficDistribution", KubeProxy: "`trafficDistribution: PreferSameNode` and `PreferSameZone`.", Locked: true},
}

// refusedGates are the errors for the enabled gates switchyard cannot honour. A gate
// enabled through AllAlpha or AllBeta counts: it would change kube-proxy all the same.
func refusedGates(gate featuregate.FeatureGate, where string) []error {
	var errs []error
	for _, g := range Gates {
		if g.Refused != "" && gate.Enabled(g.Gate) {
			errs = append(errs, fmt.Errorf("%s: feature gate %s is enabled, which changes kube-proxy (%s), and %s", where, g.Gate, strings.TrimSuffix(g.KubeProxy, "."), g.Refused))
		}
	}
	return errs
}

// clientGates lets client-go read kube-proxy's gates, as kube-proxy's client-go does
// (k8s.io/kubernetes/pkg/features replaces client-go's gates with its own).
type clientGates struct{ gate featuregate.FeatureGate }

func (g clientGates) Enabled(f clientfeatures.Feature) bool {
	return g.gate.Enabled(featuregate.Feature(f))
}

// previousMinor is the only value --show-hidden-metrics-for-version takes in kube-proxy:
// the minor release before its own.
func previousMinor() string {
	return fmt.Sprintf("%d.%d", kubeProxyVersion.Major(), kubeProxyVersion.Minor()-1)
}

// validateShowHiddenMetricsVersion checks a --show-hidden-metrics-for-version as
// component-base's metrics.ValidateShowHiddenMetricsVersion does for kube-proxy, whose
// own version is what it is compared with.
func validateShowHiddenMetricsVersion(v, where string) error {
	if v == "" || v == previousMinor() {
		return nil
	}
	return &InvalidValue{Where: where, Value: v, Allowed: fmt.Sprintf("must be omitted or have the value '%s'. Only the previous minor version is allowed", previousMinor())}
}
