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

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
)

// ServiceHealth serves the healthCheckNodePort of every LoadBalancer Service with
// externalTrafficPolicy Local: a load balancer asks it whether this node has endpoints of
// the Service, and sends traffic only to nodes that answer 200. The answer follows what the
// proxy has programmed, so it is updated after each successful sync.
type ServiceHealth struct {
	logger   klog.Logger
	nodeName string
	// events, when set, records a Warning Event on a Service whose port cannot be
	// opened, as kube-proxy's ServiceHealthServer does.
	events events.EventRecorder
	listen func(network, address string) (net.Listener, error)
	// network is "tcp4" or "tcp6": each family's proxier has its own servers, as in
	// kube-proxy, so that one family's sync never closes the other's ports; each
	// listens on its family's addresses only, so that a dual-stack Service's two
	// servers can share the port. kube-proxy v1.35 listens on both families from each
	// (kubernetes#114702, fixed so in kubernetes#137370): see docs/node-contract.md.
	network string
	// proxyHealthy is the proxy's own health (its /livez): a node whose proxy stopped
	// syncing is no place to send traffic, whatever its endpoints. The node's
	// eligibility stays out, as in kube-proxy (KEP-3836 kept it to /healthz): these
	// checks follow the local endpoints, which leave as the node drains.
	proxyHealthy func() bool

	mu      sync.Mutex
	servers map[int32]*healthServer
	// unopened are the ports wanted that could not be opened yet, by Service; each
	// update tries them again, as kube-proxy tries again at each sync.
	unopened map[types.NamespacedName]int32
	// counts are the local endpoints of each Service with a health check port.
	counts map[types.NamespacedName]int
}

type healthServer struct {
	service types.NamespacedName
	server  *http.Server
}

// NewServiceHealth makes the servers' manager of one IP family's proxier on the named
// node; no port is open until Update. proxyHealthy reports the proxy's own health;
// recorder, when not nil, is told when a port cannot be opened.
func NewServiceHealth(logger klog.Logger, family Family, nodeName string, recorder events.EventRecorder, proxyHealthy func() bool) *ServiceHealth {
	network := "tcp4"
	if family == IPv6 {
		network = "tcp6"
	}
	return &ServiceHealth{logger: logger, nodeName: nodeName, events: recorder, listen: net.Listen, network: network, proxyHealthy: proxyHealthy,
		servers: map[int32]*healthServer{}, unopened: map[types.NamespacedName]int32{}, counts: map[types.NamespacedName]int{}}
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
		delete(h.unopened, name)
		if want != 0 {
			h.unopened[name] = want
		}
	}
	for name, port := range h.unopened {
		if s, ok := h.servers[port]; ok && s.service == name {
			delete(h.unopened, name)
			continue
		}
		if err := h.open(name, port); err != nil {
			h.logger.Error(err, "Failed to start healthcheck", "node", h.nodeName, "service", name, "port", port)
			if h.events != nil {
				ref := &v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: name.Namespace, Name: name.Name}
				h.events.Eventf(ref, nil, v1.EventTypeWarning, FailedToStartServiceHealthcheckReason, "Listen",
					"node %s failed to start healthcheck %q on port %d: %v", h.nodeName, name.String(), port, err)
			}
			continue
		}
		delete(h.unopened, name)
	}
}

// FailedToStartServiceHealthcheckReason is the reason of the Event recorded on a Service
// whose health check port cannot be opened, kube-proxy's.
const FailedToStartServiceHealthcheckReason = "FailedToStartServiceHealthcheck"

func (h *ServiceHealth) open(name types.NamespacedName, port int32) error {
	if s, ok := h.servers[port]; ok {
		return fmt.Errorf("health check port %d is %s's", port, s.service)
	}
	ln, err := h.listen(h.network, net.JoinHostPort("", strconv.Itoa(int(port))))
	if err != nil {
		return err // it names the address; the caller, the Service
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

// Services lists the Services that have a health check port, one to open, or a count.
func (h *ServiceHealth) Services() []types.NamespacedName {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []types.NamespacedName
	for n := range h.counts {
		out = append(out, n)
	}
	for n := range h.unopened {
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
	clear(h.unopened)
}
