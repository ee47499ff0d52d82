// Package testenv is test-support code for switchyard's integration and e2e tests: a real
// kube-apiserver + etcd control plane started as child processes, and helpers for the
// network namespaces and veth pairs the tests build.
//
// The control plane binaries are not built here: hack/controlplane/build.sh (run through
// `make controlplane`) builds them from Go modules into a per-version cache, and this
// package only looks them up there. Separate processes (rather than an apiserver embedded
// in the test binary) keep test binaries small and fast to compile, and let a proxy that
// runs in another network namespace or in a UML guest reach the apiserver over a real link.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// KubernetesVersion is the version of the control plane binaries the tests run. It must
// match K8S_VERSION in hack/controlplane/build.sh, which builds them into the cache
// directory keyed by this version.
const KubernetesVersion = "v1.35.4"

// CacheEnv names the environment variable that overrides the cache root
// ($HOME/.cache/switchyard by default); build.sh honours the same variable.
const CacheEnv = "SWITCHYARD_CACHE"

// Defaults for ControlPlaneOptions.
const (
	DefaultBindAddress   = "127.0.0.1"
	DefaultServiceCIDR   = "10.96.0.0/16"
	DefaultAuthorization = "AlwaysAllow"
)

// defaultStartTimeout bounds startup when the caller's context has no deadline. A healthy
// start takes ~3 s on the host; the slack is for loaded CI machines.
const defaultStartTimeout = 2 * time.Minute

// logTailLines is how much of a process's log a startup error quotes.
const logTailLines = 30

// BinDir returns the directory build.sh writes the control plane binaries to:
// ${SWITCHYARD_CACHE:-$HOME/.cache/switchyard}/controlplane/<KubernetesVersion>.
func BinDir() (string, error) {
	root := os.Getenv(CacheEnv)
	if root == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("locating the control plane cache (set %s): %w", CacheEnv, err)
		}
		root = filepath.Join(home, ".cache", "switchyard")
	}
	return filepath.Join(root, "controlplane", KubernetesVersion), nil
}

// Binary returns the path of a cached control plane binary ("kube-apiserver", "etcd" or
// "kube-proxy"). When it is missing, the error says which command builds it, so that a
// failing test tells the reader exactly what to do.
func Binary(name string) (string, error) {
	dir, err := BinDir()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	fi, err := os.Stat(path)
	if err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return path, nil
	}
	how := "make controlplane"
	if name == "kube-proxy" {
		// Only the benchmarks need upstream kube-proxy, so `make controlplane` skips it.
		how = "hack/controlplane/build.sh kube-proxy"
	}
	if err == nil {
		err = errors.New("not an executable file")
	}
	return "", fmt.Errorf("%s not found at %s (%v): run `%s` to build it",
		name, path, err, how)
}

// ControlPlaneOptions configures StartControlPlane. The zero value is usable except for
// Dir, which defaults to a fresh temporary directory.
type ControlPlaneOptions struct {
	// BindAddress is the IP the apiserver listens on and advertises. Use an address the
	// test owns (e.g. the host end of a veth pair) when a proxy in another network
	// namespace must reach it. Default 127.0.0.1. etcd always stays on loopback.
	BindAddress string
	// Dir is a scratch directory for etcd data, certificates, keys, the kubeconfig and
	// the processes' logs (etcd.log, kube-apiserver.log). Tests pass t.TempDir(). If
	// empty, a temporary directory is created and removed again by Stop.
	Dir string
	// ServiceCIDR is --service-cluster-ip-range: one CIDR, or one per IP family separated
	// by a comma for a dual-stack cluster. Default 10.96.0.0/16.
	ServiceCIDR string
	// Authorization is --authorization-mode. Default AlwaysAllow; use "RBAC" to test the
	// ClusterRole the DaemonSet ships with. The test token is in system:masters, so it is
	// allowed everything either way.
	Authorization string
	// ExtraAPIServerArgs are appended to kube-apiserver's command line (later flags win).
	ExtraAPIServerArgs []string
}

// ControlPlane is a running etcd + kube-apiserver pair. Stop it when done (t.Cleanup).
type ControlPlane struct {
	// Kubeconfig is the path of a kubeconfig file for the apiserver (token auth,
	// insecure-skip-tls-verify), for handing to the proxy under test.
	Kubeconfig string
	// Server is the apiserver URL, https://BindAddress:port.
	Server string
	// Token is a bearer token in system:masters.
	Token string
	// RESTConfig is the client configuration Client was built from; copy it to build
	// other clients (it has rate limiting disabled).
	RESTConfig *rest.Config
	// Client is a clientset for the apiserver.
	Client kubernetes.Interface
	// EtcdURL is etcd's client URL (loopback).
	EtcdURL string
	// Dir is the scratch directory (see ControlPlaneOptions.Dir).
	Dir string

	etcd      *process
	apiserver *process
	removeDir bool
	stopOnce  sync.Once
}

// StartControlPlane starts etcd and kube-apiserver and returns once the apiserver is ready
// and the default namespace exists. ctx bounds startup only (2 minutes if it has no
// deadline); the processes keep running until Stop, and are killed by the kernel if the
// test process dies first.
func StartControlPlane(ctx context.Context, opts ControlPlaneOptions) (*ControlPlane, error) {
	if opts.BindAddress == "" {
		opts.BindAddress = DefaultBindAddress
	}
	if opts.ServiceCIDR == "" {
		opts.ServiceCIDR = DefaultServiceCIDR
	}
	if opts.Authorization == "" {
		opts.Authorization = DefaultAuthorization
	}
	bindIP, err := netip.ParseAddr(opts.BindAddress)
	if err != nil {
		return nil, fmt.Errorf("control plane: BindAddress %q: %w", opts.BindAddress, err)
	}
	if bindIP.IsUnspecified() {
		// The address is also the advertised one and the client's server URL, so it
		// has to be a concrete address.
		return nil, fmt.Errorf("control plane: BindAddress %s: need a specific IP, not the unspecified address", bindIP)
	}
	for _, cidr := range strings.Split(opts.ServiceCIDR, ",") {
		if _, err := netip.ParsePrefix(cidr); err != nil {
			return nil, fmt.Errorf("control plane: ServiceCIDR %q: %w", opts.ServiceCIDR, err)
		}
	}

	// Fail before creating anything if the binaries are missing.
	etcdBin, err := Binary("etcd")
	if err != nil {
		return nil, err
	}
	apiserverBin, err := Binary("kube-apiserver")
	if err != nil {
		return nil, err
	}

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}

	cp := &ControlPlane{Dir: opts.Dir}
	if cp.Dir == "" {
		dir, err := os.MkdirTemp("", "swyd-controlplane-")
		if err != nil {
			return nil, fmt.Errorf("control plane: creating scratch dir: %w", err)
		}
		cp.Dir, cp.removeDir = dir, true
	} else if err := os.MkdirAll(cp.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("control plane: creating scratch dir: %w", err)
	}

	if err := cp.start(ctx, opts, bindIP, etcdBin, apiserverBin); err != nil {
		cp.Stop()
		return nil, err
	}
	return cp, nil
}

func (cp *ControlPlane) start(ctx context.Context, opts ControlPlaneOptions, bindIP netip.Addr, etcdBin, apiserverBin string) error {
	// Free ports are picked by binding :0 and closing again, so another process could take
	// one before our child binds it. That is rare, and shows up as "address already in
	// use" in the child's log; retry a few times with fresh ports instead of flaking.
	const attempts = 3

	for i := 1; ; i++ {
		err := cp.startEtcd(ctx, etcdBin, i)
		if err == nil {
			break
		}
		if i == attempts || !errors.Is(err, errPortInUse) {
			return err
		}
	}

	if err := cp.writeCredentials(); err != nil {
		return err
	}

	for i := 1; ; i++ {
		err := cp.startAPIServer(ctx, opts, bindIP, apiserverBin, i)
		if err == nil {
			break
		}
		if i == attempts || !errors.Is(err, errPortInUse) {
			return err
		}
	}

	// /readyz only says the apiserver can serve; the default namespace is created by a
	// post-start hook shortly after, and tests create objects in it right away.
	return cp.waitForDefaultNamespace(ctx)
}

var errPortInUse = errors.New("address already in use")

func (cp *ControlPlane) startEtcd(ctx context.Context, bin string, attempt int) error {
	ports, err := freePorts("127.0.0.1", 2)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	clientPort, peerPort := ports[0], ports[1]
	clientURL := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort))
	peerURL := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort))
	// A fresh data dir per attempt: a failed attempt may have half-initialised one.
	dataDir := filepath.Join(cp.Dir, "etcd-data")
	if err := os.RemoveAll(dataDir); err != nil {
		return fmt.Errorf("etcd: clearing data dir: %w", err)
	}

	args := []string{
		"--name=swyd-test",
		"--data-dir=" + dataDir,
		// Test data is thrown away; fsync only makes every write slow.
		"--unsafe-no-fsync",
		"--listen-client-urls=" + clientURL,
		"--advertise-client-urls=" + clientURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=swyd-test=" + peerURL,
		"--initial-cluster-state=new",
	}
	p, err := startProcess("etcd", bin, args, cp.logPath("etcd", attempt))
	if err != nil {
		return err
	}
	cp.etcd = p
	cp.EtcdURL = clientURL

	hc := &http.Client{Timeout: 2 * time.Second}
	err = waitFor(ctx, p, func(ctx context.Context) error {
		return etcdHealthy(ctx, hc, clientURL)
	})
	if err != nil {
		p.kill()
		cp.etcd = nil
		return p.startError("etcd did not become healthy at "+clientURL, err)
	}
	return nil
}

// etcdHealthy checks etcd's /health, which answers {"health":"true"} once the member has a
// leader and can serve.
func etcdHealthy(ctx context.Context, hc *http.Client, clientURL string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, clientURL+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var h struct {
		Health string `json:"health"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &h) != nil || h.Health != "true" {
		return fmt.Errorf("GET /health: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// writeCredentials creates what kube-apiserver needs to authenticate: a service account
// signing key pair (required by the apiserver even though no tokens are minted here) and a
// static token file with one system:masters user. Go's crypto does it so tests need no
// openssl.
func (cp *ControlPlane) writeCredentials() error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("service account key: %w", err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("service account key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("service account key: %w", err)
	}
	if err := os.WriteFile(cp.saKeyPath(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600); err != nil {
		return fmt.Errorf("service account key: %w", err)
	}
	if err := os.WriteFile(cp.saPubPath(), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return fmt.Errorf("service account key: %w", err)
	}

	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return fmt.Errorf("token: %w", err)
	}
	cp.Token = hex.EncodeToString(tok)
	// token,user,uid,"group1,group2"
	line := cp.Token + `,switchyard-test,switchyard-test,"system:masters"` + "\n"
	if err := os.WriteFile(cp.tokenPath(), []byte(line), 0o600); err != nil {
		return fmt.Errorf("token file: %w", err)
	}
	return nil
}

func (cp *ControlPlane) startAPIServer(ctx context.Context, opts ControlPlaneOptions, bindIP netip.Addr, bin string, attempt int) error {
	ports, err := freePorts(bindIP.String(), 1)
	if err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	port := ports[0]
	server := "https://" + net.JoinHostPort(bindIP.String(), strconv.Itoa(port))

	args := []string{
		"--etcd-servers=" + cp.EtcdURL,
		"--bind-address=" + bindIP.String(),
		"--secure-port=" + strconv.Itoa(port),
		"--advertise-address=" + bindIP.String(),
		// The apiserver self-signs a serving certificate here; clients skip verification.
		"--cert-dir=" + filepath.Join(cp.Dir, "apiserver-certs"),
		"--service-cluster-ip-range=" + opts.ServiceCIDR,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + cp.saPubPath(),
		"--service-account-signing-key-file=" + cp.saKeyPath(),
		"--token-auth-file=" + cp.tokenPath(),
		"--authorization-mode=" + opts.Authorization,
	}
	if bindIP.IsLoopback() {
		// The apiserver publishes its advertise address as the endpoints of the
		// `kubernetes` Service and refuses loopback there, logging errors forever.
		args = append(args, "--endpoint-reconciler-type=none")
	}
	args = append(args, opts.ExtraAPIServerArgs...)

	p, err := startProcess("kube-apiserver", bin, args, cp.logPath("kube-apiserver", attempt))
	if err != nil {
		return err
	}
	cp.apiserver = p
	cp.Server = server

	hc := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			// The serving certificate is self-signed by the apiserver at startup.
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		},
	}
	defer hc.CloseIdleConnections()
	err = waitFor(ctx, p, func(ctx context.Context) error {
		return apiserverReady(ctx, hc, server, cp.Token)
	})
	if err != nil {
		p.kill()
		cp.apiserver = nil
		return p.startError("kube-apiserver did not become ready at "+server, err)
	}

	if err := cp.writeKubeconfig(); err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		return fmt.Errorf("loading %s: %w", cp.Kubeconfig, err)
	}
	// Tests create thousands of objects; client-side throttling (5 QPS by default) would
	// only slow them down against a private apiserver. A negative QPS disables it.
	cfg.QPS = -1
	cp.RESTConfig = cfg
	client, err := kubernetes.NewForConfig(rest.CopyConfig(cfg))
	if err != nil {
		return fmt.Errorf("building clientset: %w", err)
	}
	cp.Client = client
	return nil
}

// apiserverReady checks /readyz, which is 200 once every readiness check (etcd, informers
// synced, post-start hooks) passes.
func apiserverReady(ctx context.Context, hc *http.Client, server, token string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, server+"/readyz", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /readyz: %s: %s", resp.Status, lastLines(string(body), 5))
	}
	return nil
}

// writeKubeconfig writes Dir/kubeconfig, the form in which the proxy under test (and a
// human debugging a failed test with kubectl) takes its credentials.
func (cp *ControlPlane) writeKubeconfig() error {
	const name = "switchyard-test"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: cp.Server, InsecureSkipTLSVerify: true}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: cp.Token}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	cfg.CurrentContext = name
	path := filepath.Join(cp.Dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig: %w", err)
	}
	cp.Kubeconfig = path
	return nil
}

func (cp *ControlPlane) waitForDefaultNamespace(ctx context.Context) error {
	err := waitFor(ctx, cp.apiserver, func(ctx context.Context) error {
		_, err := cp.Client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{})
		return err
	})
	if err != nil {
		return cp.apiserver.startError("namespace \"default\" did not appear", err)
	}
	return nil
}

// Stop kills kube-apiserver and etcd and waits for them to exit. It is safe to call more
// than once. The scratch directory (with the logs) is left alone unless StartControlPlane
// created it.
func (cp *ControlPlane) Stop() {
	cp.stopOnce.Do(func() {
		// Nothing is worth keeping in a test cluster, so no graceful shutdown: SIGKILL is
		// immediate and cannot hang. The apiserver goes first so it does not log a burst of
		// etcd connection errors.
		if cp.apiserver != nil {
			cp.apiserver.kill()
		}
		if cp.etcd != nil {
			cp.etcd.kill()
		}
		if cp.removeDir {
			_ = os.RemoveAll(cp.Dir)
		}
	})
}

func (cp *ControlPlane) logPath(name string, attempt int) string {
	if attempt > 1 {
		name += "." + strconv.Itoa(attempt)
	}
	return filepath.Join(cp.Dir, name+".log")
}

func (cp *ControlPlane) saKeyPath() string { return filepath.Join(cp.Dir, "sa.key") }
func (cp *ControlPlane) saPubPath() string { return filepath.Join(cp.Dir, "sa.pub") }
func (cp *ControlPlane) tokenPath() string { return filepath.Join(cp.Dir, "tokens.csv") }

// process is a child process whose output goes to a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	waitErr error         // valid after done is closed
}

func startProcess(name, bin string, args []string, logPath string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: creating log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	// An *os.File is handed to the child directly, so no copying goroutine is involved and
	// the log is complete even if the test binary is killed.
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// If the test process dies (panic, timeout, ^C) without calling Stop, the kernel
		// kills the children instead of leaving an apiserver and etcd behind. (The signal
		// fires when the starting OS thread exits; Go keeps threads alive unless a
		// goroutine exits while locked to one with runtime.LockOSThread.)
		Pdeathsig: syscall.SIGKILL,
	}
	fmt.Fprintf(logFile, "# %s %s\n", bin, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("%s: starting %s: %w", name, bin, err)
	}
	// The child has its own copy of the descriptor.
	logFile.Close()

	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has exited, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// kill sends SIGKILL and waits for the process to be reaped.
func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// startError builds the error for a failed start: what was waited for, the last probe
// error, and the end of the process's log, which is where the real reason is.
func (p *process) startError(what string, err error) error {
	tail, terr := tailFile(p.logPath, logTailLines)
	if terr != nil {
		tail = fmt.Sprintf("(reading log: %v)", terr)
	}
	wrapped := fmt.Errorf("%s: %w\n--- last lines of %s ---\n%s", what, err, p.logPath, tail)
	if strings.Contains(tail, "address already in use") {
		return portInUseError{wrapped}
	}
	return wrapped
}

// portInUseError marks a start that failed because the picked port was taken meanwhile,
// so that the caller retries with another; its message is the wrapped error's.
type portInUseError struct{ error }

func (e portInUseError) Unwrap() error        { return e.error }
func (e portInUseError) Is(target error) bool { return target == errPortInUse }

// waitFor polls check until it succeeds, the process exits, or ctx is done.
func waitFor(ctx context.Context, p *process, check func(context.Context) error) error {
	const interval = 100 * time.Millisecond
	var last error
	for {
		if done, werr := p.exited(); done {
			if werr == nil {
				werr = errors.New("exit status 0")
			}
			return fmt.Errorf("%s exited: %w", p.name, werr)
		}
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last check: %v)", ctx.Err(), last)
		case <-p.done:
		case <-time.After(interval):
		}
	}
}

// freePorts returns n distinct TCP ports that were free on ip a moment ago. The listeners
// are held until all n are picked so the kernel cannot hand out the same port twice.
func freePorts(ip string, n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return nil, fmt.Errorf("picking a free port on %s: %w", ip, err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// tailFile returns the last n lines of a file, reading at most its last 256 KiB (apiserver
// logs can be long, and only the end matters).
func tailFile(path string, n int) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	const maxRead = 256 << 10
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	off := max(fi.Size()-maxRead, 0)
	buf := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return lastLines(string(buf), n), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// PauseAPIServer stops the apiserver process (SIGSTOP) without killing it: clients'
// connections hang, as in an outage or a partition, until ResumeAPIServer.
func (cp *ControlPlane) PauseAPIServer() error {
	return cp.apiserver.cmd.Process.Signal(syscall.SIGSTOP)
}

// ResumeAPIServer continues the apiserver after PauseAPIServer.
func (cp *ControlPlane) ResumeAPIServer() error {
	return cp.apiserver.cmd.Process.Signal(syscall.SIGCONT)
}

// PutStorage writes obj, as JSON, straight into etcd under key (e.g.
// "/registry/services/specs/default/web"), past the apiserver's validation. Tests use it
// for objects the apiserver no longer accepts but may still hold from older releases; the
// apiserver reads JSON from storage as well as protobuf, and its watchers see the write.
func (cp *ControlPlane) PutStorage(ctx context.Context, key string, obj any) error {
	value, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", key, err)
	}
	// etcd's gRPC gateway takes keys and values base64-encoded.
	body, err := json.Marshal(map[string]string{
		"key":   base64.StdEncoding.EncodeToString([]byte(key)),
		"value": base64.StdEncoding.EncodeToString(value),
	})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cp.EtcdURL+"/v3/kv/put", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("writing %s to etcd: %w", key, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("writing %s to etcd: %s: %s", key, resp.Status, msg)
	}
	return nil
}
