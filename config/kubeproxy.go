package config

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
	"k8s.io/utils/ptr"
)

// The proxy modes kube-proxy's configuration knows on Linux; which of them switchyard
// runs is the registry's business (package modes).
const (
	modeIPTables = "iptables"
	modeIPVS     = "ipvs"
	modeNFTables = "nftables"
)

// kube-proxy's default ports (k8s.io/kubernetes/pkg/cluster/ports).
const (
	healthzPort = 10256
	metricsPort = 10249
)

// kubeProxyConfig is kube-proxy's internal configuration (pkg/proxy/apis/config in
// k8s.io/kubernetes), the one its flags set, its file is converted to and its
// --write-config-to writes. It has the file's fields, except that three settings whose
// place in the file depends on the mode are held once, as the internal type holds them:
// the file keeps a sync period in each mode's section, and the internal type has the one
// of the mode in use.
type kubeProxyConfig struct {
	// KubeProxyConfiguration holds every other setting. Its sections' syncPeriod,
	// minSyncPeriod and masqueradeAll, and its portRange (gone from the internal type),
	// are always zero.
	kpv1alpha1.KubeProxyConfiguration
	syncPeriod, minSyncPeriod time.Duration
	masqueradeAll             bool
}

// defaultKubeProxyConfig is kube-proxy's configuration before any flag or file: the
// defaults of an empty file (kube-proxy's newKubeProxyConfiguration).
func defaultKubeProxyConfig() *kubeProxyConfig {
	var file kpv1alpha1.KubeProxyConfiguration
	setDefaults(&file)
	return internalConfig(file)
}

// setDefaults fills in the fields a file leaves out, as kube-proxy's
// SetDefaults_KubeProxyConfiguration (pkg/proxy/apis/config/v1alpha1). Note which zero
// values it cannot tell from unset: an iptables.minSyncPeriod of 0 becomes 1s, an empty
// healthzBindAddress the default address; ipvs.minSyncPeriod has no default.
func setDefaults(c *kpv1alpha1.KubeProxyConfiguration) {
	if c.BindAddress == "" {
		c.BindAddress = "0.0.0.0"
	}
	// The default addresses follow bindAddress's IP family.
	healthzHost, metricsHost := "0.0.0.0", "127.0.0.1"
	if netutils.ParseIPSloppy(c.BindAddress).To4() == nil {
		healthzHost, metricsHost = "[::]", "[::1]"
	}
	if c.HealthzBindAddress == "" {
		c.HealthzBindAddress = fmt.Sprintf("%s:%d", healthzHost, healthzPort)
	} else {
		c.HealthzBindAddress = appendPortIfNeeded(c.HealthzBindAddress, healthzPort)
	}
	if c.MetricsBindAddress == "" {
		c.MetricsBindAddress = fmt.Sprintf("%s:%d", metricsHost, metricsPort)
	} else {
		c.MetricsBindAddress = appendPortIfNeeded(c.MetricsBindAddress, metricsPort)
	}
	if c.OOMScoreAdj == nil {
		c.OOMScoreAdj = ptr.To[int32](-999)
	}
	defaultDuration(&c.IPTables.SyncPeriod, 30*time.Second)
	defaultDuration(&c.IPTables.MinSyncPeriod, time.Second)
	if c.IPTables.LocalhostNodePorts == nil {
		c.IPTables.LocalhostNodePorts = ptr.To(true)
	}
	defaultDuration(&c.IPVS.SyncPeriod, 30*time.Second)
	defaultDuration(&c.NFTables.SyncPeriod, 30*time.Second)
	defaultDuration(&c.NFTables.MinSyncPeriod, time.Second)
	if c.Conntrack.MaxPerCore == nil {
		c.Conntrack.MaxPerCore = ptr.To[int32](32 * 1024)
	}
	if c.Conntrack.Min == nil {
		c.Conntrack.Min = ptr.To[int32](128 * 1024)
	}
	if c.IPTables.MasqueradeBit == nil {
		c.IPTables.MasqueradeBit = ptr.To[int32](14)
	}
	if c.NFTables.MasqueradeBit == nil {
		c.NFTables.MasqueradeBit = ptr.To[int32](14)
	}
	if c.Conntrack.TCPEstablishedTimeout == nil {
		c.Conntrack.TCPEstablishedTimeout = &metav1.Duration{Duration: 24 * time.Hour}
	}
	if c.Conntrack.TCPCloseWaitTimeout == nil {
		c.Conntrack.TCPCloseWaitTimeout = &metav1.Duration{Duration: time.Hour}
	}
	defaultDuration(&c.ConfigSyncPeriod, 15*time.Minute)
	if c.ClientConnection.ContentType == "" {
		c.ClientConnection.ContentType = "application/vnd.kubernetes.protobuf"
	}
	if c.ClientConnection.QPS == 0 {
		c.ClientConnection.QPS = 5
	}
	if c.ClientConnection.Burst == 0 {
		c.ClientConnection.Burst = 10
	}
	if c.FeatureGates == nil {
		c.FeatureGates = map[string]bool{}
	}
	logsapi.SetRecommendedLoggingConfiguration(&c.Logging)
}

func defaultDuration(d *metav1.Duration, value time.Duration) {
	if d.Duration == 0 {
		d.Duration = value
	}
}

// appendPortIfNeeded gives an address without a port the default one, as kube-proxy's
// proxyutil.AppendPortIfNeeded; anything but an IP is left for validation to refuse.
func appendPortIfNeeded(addr string, port int32) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	ip := netutils.ParseIPSloppy(addr)
	if ip == nil {
		return addr
	}
	return net.JoinHostPort(addr, strconv.Itoa(int(port)))
}

// modeSection is the name of the file's section whose sync periods a mode uses; an
// empty mode is iptables, as kube-proxy defaults it.
func modeSection(mode kpv1alpha1.ProxyMode) string {
	switch mode {
	case modeIPVS, modeNFTables:
		return string(mode)
	}
	return modeIPTables
}

// internalConfig converts a defaulted file to the internal form, as kube-proxy's
// Convert_v1alpha1_KubeProxyConfiguration_To_config_KubeProxyConfiguration: the sync
// periods come from the section of the file's mode, and masqueradeAll from the nftables
// section in nftables mode, from the iptables one otherwise. The other sections' values
// are dropped.
func internalConfig(file kpv1alpha1.KubeProxyConfiguration) *kubeProxyConfig {
	c := &kubeProxyConfig{masqueradeAll: file.IPTables.MasqueradeAll}
	switch modeSection(file.Mode) {
	case modeIPTables:
		c.syncPeriod, c.minSyncPeriod = file.IPTables.SyncPeriod.Duration, file.IPTables.MinSyncPeriod.Duration
	case modeIPVS:
		c.syncPeriod, c.minSyncPeriod = file.IPVS.SyncPeriod.Duration, file.IPVS.MinSyncPeriod.Duration
	case modeNFTables:
		c.syncPeriod, c.minSyncPeriod = file.NFTables.SyncPeriod.Duration, file.NFTables.MinSyncPeriod.Duration
		c.masqueradeAll = file.NFTables.MasqueradeAll
	}
	file.IPTables.SyncPeriod, file.IPTables.MinSyncPeriod, file.IPTables.MasqueradeAll = metav1.Duration{}, metav1.Duration{}, false
	file.IPVS.SyncPeriod, file.IPVS.MinSyncPeriod = metav1.Duration{}, metav1.Duration{}
	file.NFTables.SyncPeriod, file.NFTables.MinSyncPeriod, file.NFTables.MasqueradeAll = metav1.Duration{}, metav1.Duration{}, false
	file.PortRange = ""
	file.TypeMeta = metav1.TypeMeta{}
	c.KubeProxyConfiguration = file
	return c
}

// file converts the internal form back to a file, as kube-proxy's
// Convert_config_KubeProxyConfiguration_To_v1alpha1_KubeProxyConfiguration: the
// mode-dependent settings go to the section of the mode, the others' stay zero.
func (c *kubeProxyConfig) file() *kpv1alpha1.KubeProxyConfiguration {
	out := c.DeepCopy()
	out.TypeMeta = metav1.TypeMeta{APIVersion: kpv1alpha1.SchemeGroupVersion.String(), Kind: "KubeProxyConfiguration"}
	sync, minSync := metav1.Duration{Duration: c.syncPeriod}, metav1.Duration{Duration: c.minSyncPeriod}
	switch modeSection(c.Mode) {
	case modeIPTables:
		out.IPTables.SyncPeriod, out.IPTables.MinSyncPeriod = sync, minSync
	case modeIPVS:
		out.IPVS.SyncPeriod, out.IPVS.MinSyncPeriod = sync, minSync
	case modeNFTables:
		out.NFTables.SyncPeriod, out.NFTables.MinSyncPeriod = sync, minSync
	}
	if c.Mode == modeNFTables {
		out.NFTables.MasqueradeAll = c.masqueradeAll
	} else {
		out.IPTables.MasqueradeAll = c.masqueradeAll
	}
	return out
}

// codecs decode and encode KubeProxyConfiguration files as kube-proxy's
// (proxyconfigscheme.Codecs): strictly, and leniently for the fallback.
var strictCodecs, lenientCodecs = newCodecs()

func newCodecs() (strict, lenient serializer.CodecFactory) {
	scheme := runtime.NewScheme()
	if err := kpv1alpha1.AddToScheme(scheme); err != nil {
		panic(fmt.Sprintf("registering KubeProxyConfiguration: %v", err))
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict), serializer.NewCodecFactory(scheme, serializer.DisableStrict)
}

// loadFile reads a KubeProxyConfiguration file (YAML or JSON) as kube-proxy's
// loadConfig: strictly first, and when only strict decoding fails (an unknown field, a
// key in another case, a field given twice), leniently, with a warning, ignoring those
// fields. Only the first YAML document is read. The result is defaulted and converted
// to the internal form.
func loadFile(path string, logger klog.Logger) (*kubeProxyConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: reading %s: %w", path, err)
	}
	obj, _, err := strictCodecs.UniversalDeserializer().Decode(data, nil, nil)
	if err != nil {
		if !runtime.IsStrictDecodingError(err) {
			return nil, fmt.Errorf("--config: decoding %s: %w", path, err)
		}
		var lenientErr error
		obj, _, lenientErr = lenientCodecs.UniversalDeserializer().Decode(data, nil, nil)
		if lenientErr != nil {
			// As kube-proxy, report the strict error, which names more.
			return nil, fmt.Errorf("--config: decoding %s: %w", path, err)
		}
		logger.Info("Using lenient decoding as strict decoding failed", "file", path, "err", err)
	}
	file, ok := obj.(*kpv1alpha1.KubeProxyConfiguration)
	if !ok {
		return nil, fmt.Errorf("--config: %s holds a %T, not a KubeProxyConfiguration", path, obj)
	}
	setDefaults(file)
	return internalConfig(*file), nil
}

// writeFile writes c as kube-proxy's --write-config-to does: the file form, in YAML.
func (c *kubeProxyConfig) writeFile(w io.Writer) error {
	info, ok := runtime.SerializerInfoForMediaType(strictCodecs.SupportedMediaTypes(), runtime.ContentTypeYAML)
	if !ok {
		return fmt.Errorf("no %s encoder", runtime.ContentTypeYAML)
	}
	return strictCodecs.EncoderForVersion(info.Serializer, kpv1alpha1.SchemeGroupVersion).Encode(c.file(), w)
}

// hostname is the node name kube-proxy derives from hostnameOverride (component-helpers'
// GetHostname): the override, else the hostname, trimmed and lower-cased.
func hostname(override string) (string, error) {
	name := override
	if name == "" {
		var err error
		if name, err = os.Hostname(); err != nil {
			return "", fmt.Errorf("hostnameOverride is empty and the hostname is unknown: %w", err)
		}
	}
	name = strings.TrimSpace(name)
	if name == "" {
		return "", fmt.Errorf("empty hostname is invalid")
	}
	return strings.ToLower(name), nil
}
