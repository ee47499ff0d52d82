package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/deploy"
	"github.com/switchyard/switchyard/internal/lab"
	"github.com/switchyard/switchyard/proxier"
)

// TestRunsAsItsServiceAccount runs switchyard with the credentials of the ServiceAccount
// in deploy/rbac.yaml, against an apiserver that enforces RBAC: Service traffic works, an
// unusable field is reported as an Event on its Service, and the account is denied what
// the proxy does not need. The API access is the same in every mode, so one mode runs.
func TestRunsAsItsServiceAccount(t *testing.T) {
	l := startLabWith(t, lab.Options{Pods: 3, Authorization: "RBAC"})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := l.Client

	restConfig, err := clientcmd.BuildConfigFromFlags("", l.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := deploy.Objects("rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := deploy.Apply(ctx, restConfig, objs, false); err != nil {
		t.Fatalf("applying deploy/rbac.yaml: %v", err)
	}
	// kubelet mounts a token like this one into the DaemonSet's pods.
	token, err := admin.CoreV1().ServiceAccounts(metav1.NamespaceSystem).CreateToken(ctx, "switchyard",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("requesting a token for the switchyard ServiceAccount: %v", err)
	}
	kubeconfig := serviceAccountKubeconfig(t, l.Kubeconfig, token.Status.Token)

	_, logPath := startProxyIn(t, l, proxyModes[0], "--kubeconfig="+kubeconfig)
	_, url := serveWeb(ctx, t, l, l.Pods)

	// A Service with fields the apiserver no longer accepts, as an older release may have
	// stored it: the bad fields are skipped, and its owner is told with an Event.
	bad := lab.Service("bad")
	bad.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Service"}
	bad.Namespace, bad.UID, bad.CreationTimestamp = "default", "4f3c2b1a-0000-4000-8000-000000000001", metav1.Now()
	bad.Spec.ClusterIP, bad.Spec.ClusterIPs = "10.96.200.200", []string{"10.96.200.200"}
	bad.Spec.ExternalIPs = []string{"192.0.2.300"}
	if err := l.ControlPlane().PutStorage(ctx, "/registry/services/specs/default/bad", bad); err != nil {
		t.Fatal(err)
	}
	expectInvalidFieldEvent(ctx, t, admin, "bad", "spec.externalIPs[0]")
	expectFlow(ctx, t, "after the unusable field", func() (lab.Result, error) { return l.Get(ctx, url, 30) }, l.Pods, "", "")

	// Denied what the proxy does not need.
	saConfig, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	sa := kubernetes.NewForConfigOrDie(saConfig)
	denied := map[string]error{}
	_, denied["list Secrets"] = sa.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{})
	_, denied["list Pods"] = sa.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
	_, denied["get a Service"] = sa.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
	denied["delete a Service"] = sa.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{})
	_, denied["update a Node"] = sa.CoreV1().Nodes().Update(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: lab.NodeName}}, metav1.UpdateOptions{})
	for what, err := range denied {
		if !apierrors.IsForbidden(err) {
			t.Errorf("the ServiceAccount may %s: got %v, want Forbidden", what, err)
		}
	}
	// ...and never needed more than it has.
	log, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(log), "forbidden") {
		t.Errorf("switchyard was denied something it uses:\n%s", tail(string(log), 40))
	}
}

// serviceAccountKubeconfig writes a copy of the lab's kubeconfig that authenticates with
// token instead of the lab's admin token.
func serviceAccountKubeconfig(t *testing.T, labKubeconfig, token string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(labKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, auth := range cfg.AuthInfos {
		auth.Token = token
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// expectInvalidFieldEvent waits for switchyard's Warning Event on the named object,
// naming the field.
func expectInvalidFieldEvent(ctx context.Context, t *testing.T, client kubernetes.Interface, object, field string) {
	t.Helper()
	err := lab.Eventually(ctx, 30*time.Second, 250*time.Millisecond, func() error {
		events, err := client.EventsV1().Events("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		var seen []string
		for _, e := range events.Items {
			if e.Regarding.Name == object && e.Reason == proxier.InvalidFieldReason && e.Type == v1.EventTypeWarning &&
				e.ReportingController == "switchyard" && strings.Contains(e.Note, field) {
				return nil
			}
			seen = append(seen, fmt.Sprintf("%s %s: %s", e.Regarding.Name, e.Reason, e.Note))
		}
		return fmt.Errorf("no %s Event from switchyard on %s naming %s; events: %v", proxier.InvalidFieldReason, object, field, seen)
	})
	if err != nil {
		t.Fatal(err)
	}
}
