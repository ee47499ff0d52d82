package testenv

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// TestControlPlaneStarts runs the real kube-apiserver and etcd. It fails (rather than
// skips) when the binaries are missing: a skipped test here would silently drop every
// integration test's foundation; the failure message says to run `make controlplane`.
func TestControlPlaneStarts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	start := time.Now()
	cp, err := StartControlPlane(ctx, ControlPlaneOptions{
		BindAddress: "127.0.0.1",
		Dir:         t.TempDir(),
	})
	if err != nil {
		t.Fatalf("StartControlPlane: %v", err)
	}
	t.Cleanup(cp.Stop)
	t.Logf("control plane at %s ready in %v", cp.Server, time.Since(start).Round(time.Millisecond))

	want := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "swyd-probe", Namespace: metav1.NamespaceDefault},
		Data:       map[string]string{"hello": "switchyard"},
	}
	if _, err := cp.Client.CoreV1().ConfigMaps(want.Namespace).Create(ctx, want, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating ConfigMap: %v", err)
	}

	// Read it back through a client built from the kubeconfig file, the way the proxy
	// under test will be configured.
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		t.Fatalf("loading kubeconfig: %v", err)
	}
	if cfg.Host != cp.Server {
		t.Errorf("kubeconfig server = %q, want %q", cfg.Host, cp.Server)
	}
	fromFile, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client from kubeconfig: %v", err)
	}
	got, err := fromFile.CoreV1().ConfigMaps(want.Namespace).Get(ctx, want.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading ConfigMap back: %v", err)
	}
	if got.Data["hello"] != "switchyard" {
		t.Errorf("ConfigMap data = %v, want hello=switchyard", got.Data)
	}

	v, err := cp.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if v.GitVersion != KubernetesVersion {
		t.Errorf("server version = %s, want %s (built without build.sh's ldflags?)", v.GitVersion, KubernetesVersion)
	}

	cp.Stop()
	cp.Stop() // idempotent
	if _, err := cp.Client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{}); err == nil {
		t.Errorf("apiserver still answers after Stop")
	}
}
