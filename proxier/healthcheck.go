package proxier

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// ServiceHealth serves the healthCheckNodePort of every LoadBalancer Service with
// externalTrafficPolicy Local: a load balancer asks it whether this node has endpoints of
// the Service, and sends traffic only to nodes that answer 200. The answer follows what the
// proxy has programmed, so it is updated after each successful sync.
type ServiceHealth struct {
	logger klog.Logger
	listen func(network, address string) (net.Listener, error)
	// network is "tcp4" or "tcp6": each family's proxier has its own servers, as in
	// kube-proxy, so that one family's sync never closes the other's ports; each
	// listens on its family's addresses only, so that a dual-stack Service's two
	// servers can share the port.
	network string
	// proxyHealthy is the proxy's own health (its /livez): a node whose proxy stopped
	// syncing is no place to send traffic, whatever its endpoints. The node's
	// eligibility stays out, as in kube-proxy (KEP-3836 kept it to /healthz): these
	// checks follow the local endpoints, which leave as the node drains.
	proxyHealthy func() bool

	mu      sync.Mutex
	servers map[int32]*healthServer
	// counts are the local endpoints of each Service with a health check port.
	counts map[types.NamespacedName]int
}

type healthServer struct {
	service types.NamespacedName
	server  *http.Server
}

// NewServiceHealth makes the servers' manager of one IP family's proxier; no port is
// open until Update. proxyHealthy reports the proxy's own health.
func NewServiceHealth(logger klog.Logger, family Family, proxyHealthy func() bool) *ServiceHealth {
	network := "tcp4"
	if family == IPv6 {
		network = "tcp6"
	}
	return &ServiceHealth{logger: logger, listen: net.Listen, network: network, proxyHealthy: proxyHealthy,
		servers: map[int32]*healthServer{}, counts: map[types.NamespacedName]int{}}
}

// Update sets the health check ports and local endpoint counts of the given Services;
// a Service absent from ports has no health check port any more.
func (h *ServiceHealth) Update(ports map[types.NamespacedName]int32, counts map[types.NamespacedName]int, changed []types.NamespacedName) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, name := range changed {
		if counts[name] > 0 || ports[name] != 0 {
			h.counts[name] = counts[name]
		} else {
			delete(h.counts, name)
		}
		want := ports[name]
		for port, s := range h.servers {
			if s.service == name && port != want {
				h.logger.V(2).Info("Closing health check port", "service", name, "port", port)
				_ = s.server.Close()
				delete(h.servers, port)
			}
		}
		if want == 0 {
			continue
		}
		if s, ok := h.servers[want]; ok {
			if s.service != name {
				h.logger.Error(nil, "Health check port already used by another Service", "service", name, "port", want, "user", s.service)
			}
			continue
		}
		if err := h.open(name, want); err != nil {
			// The next sync of this Service tries again.
			h.logger.Error(err, "Cannot serve health check port", "service", name, "port", want)
		}
	}
}

func (h *ServiceHealth) open(name types.NamespacedName, port int32) error {
	ln, err := h.listen(h.network, net.JoinHostPort("", strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("listening on health check port %d: %w", port, err)
	}
	s := &healthServer{service: name}
	s.server = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h.mu.Lock()
		count := h.counts[name]
		h.mu.Unlock()
		h.answer(w, name, count, h.proxyHealthy())
	})}
	h.servers[port] = s
	h.logger.V(2).Info("Serving health check port", "service", name, "port", port)
	go func() {
		if err := s.server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.logger.Error(err, "Health check server stopped", "service", name, "port", port)
		}
	}()
	return nil
}

// answer writes kube-proxy's answer to a health check, byte for byte (load balancers and
// their operators match on it): 200 only when the node has local endpoints and its proxy
// is healthy, the count in a header and in an indented JSON body without a final newline.
func (h *ServiceHealth) answer(w http.ResponseWriter, name types.NamespacedName, count int, proxyHealthy bool) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
	if count == 0 || !proxyHealthy {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintf(w, "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
		name.Namespace, name.Name, count, proxyHealthy)
}

// Services lists the Services that have a health check port or a count.
func (h *ServiceHealth) Services() []types.NamespacedName {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []types.NamespacedName
	for n := range h.counts {
		out = append(out, n)
	}
	for _, s := range h.servers {
		out = append(out, s.service)
	}
	return out
}

// Close closes every health check port.
func (h *ServiceHealth) Close(ctx context.Context) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, s := range h.servers {
		_ = s.server.Shutdown(ctx)
		delete(h.servers, port)
	}
}
