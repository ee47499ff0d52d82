package deploy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/switchyard/switchyard/config"
	"github.com/switchyard/switchyard/internal/testenv"
	"github.com/switchyard/switchyard/modes"
)

// TestManifestsPassServerSideDryRun sends every manifest to a real apiserver with RBAC on,
// as `kubectl apply --server-side --dry-run=server` would: each must pass schema
// validation and admission (the priority class must exist, the RBAC objects must be
// well formed).
func TestManifestsPassServerSideDryRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := testenv.StartControlPlane(ctx, testenv.ControlPlaneOptions{Dir: t.TempDir(), Authorization: "RBAC",
		// The init container is privileged, like kube-proxy's whole pod; kubeadm and the
		// managed distributions allow privileged pods for that reason.
		ExtraAPIServerArgs: []string{"--allow-privileged=true"}})
	if err != nil {
		t.Fatalf("starting the control plane: %v", err)
	}
	t.Cleanup(cp.Stop)
	// kube-system and the system priority classes are created by the apiserver's
	// post-start hooks, a moment after it reports ready.
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		if _, err := cp.Client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceSystem, metav1.GetOptions{}); err != nil {
			return false, nil
		}
		_, err := cp.Client.SchedulingV1().PriorityClasses().Get(ctx, "system-node-critical", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("waiting for kube-system and system-node-critical: %v", err)
	}

	objs, err := Objects()
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(ctx, cp.RESTConfig, objs, true); err != nil {
		t.Fatal(err)
	}
	// A dry run stores nothing.
	_, err = cp.Client.AppsV1().DaemonSets(metav1.NamespaceSystem).Get(ctx, "switchyard", metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("after a dry run, getting the DaemonSet: got %v, want NotFound", err)
	}
}

// TestShippedConfigurationParses runs the ConfigMap's KubeProxyConfiguration and each
// container's command line through switchyard's own configuration parser, so a
// manifest that switchyard would reject at startup fails here instead.
func TestShippedConfigurationParses(t *testing.T) {
	var cm v1.ConfigMap
	var ds appsv1.DaemonSet
	objs, err := Objects("config.yaml", "daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range objs {
		var into any
		switch obj.GetKind() {
		case "ConfigMap":
			into = &cm
		case "DaemonSet":
			into = &ds
		default:
			continue
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, into); err != nil {
			t.Fatalf("%s: %v", obj.GetKind(), err)
		}
	}
	kubeconfig, err := clientcmd.Load([]byte(cm.Data["kubeconfig.conf"]))
	if err != nil {
		t.Fatalf("kubeconfig.conf: %v", err)
	}
	current := kubeconfig.Contexts[kubeconfig.CurrentContext]
	if current == nil || kubeconfig.Clusters[current.Cluster] == nil || kubeconfig.AuthInfos[current.AuthInfo] == nil ||
		kubeconfig.AuthInfos[current.AuthInfo].TokenFile != "/var/run/secrets/kubernetes.io/serviceaccount/token" {
		t.Errorf("kubeconfig.conf: want a current context whose user reads the pod's ServiceAccount token, got %+v", kubeconfig)
	}
	dir := t.TempDir()
	for name, content := range cm.Data {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	tests := []struct {
		container    v1.Container
		wantInitOnly bool
	}{
		{container: ds.Spec.Template.Spec.InitContainers[0], wantInitOnly: true},
		{container: ds.Spec.Template.Spec.Containers[0], wantInitOnly: false},
	}
	for _, tt := range tests {
		t.Run(tt.container.Name, func(t *testing.T) {
			var args []string
			for _, arg := range tt.container.Command[1:] {
				// The config volume's mount point is this test's directory; the node
				// name comes from the downward API.
				arg = strings.ReplaceAll(arg, tt.container.VolumeMounts[0].MountPath, dir)
				args = append(args, strings.ReplaceAll(arg, "$(NODE_NAME)", "node-a"))
			}
			parsed, err := config.Parse(args, modes.All.Names(), os.Stderr)
			if err != nil {
				t.Fatalf("switchyard %s: %v", strings.Join(args, " "), err)
			}
			cfg := parsed.Config
			if cfg.Mode != modes.IPTables.Name || cfg.NodeName != "node-a" || len(cfg.ClusterCIDRs) != 1 || cfg.InitOnly != tt.wantInitOnly {
				t.Errorf("parsed configuration: mode %q, node %q, cluster CIDRs %v, init-only %t; want iptables, node-a, one CIDR, %t",
					cfg.Mode, cfg.NodeName, cfg.ClusterCIDRs, cfg.InitOnly, tt.wantInitOnly)
			}
			if cfg.Kubeconfig != tt.container.VolumeMounts[0].MountPath+"/kubeconfig.conf" {
				t.Errorf("kubeconfig %q, want the ConfigMap's kubeconfig.conf: the kubernetes Service's cluster IP is not reachable before the proxy runs", cfg.Kubeconfig)
			}
			if cfg.MetricsBindAddress != "0.0.0.0:10249" {
				t.Errorf("metrics bind address %q, want every address so Prometheus can scrape it", cfg.MetricsBindAddress)
			}
		})
	}
}
