package proxier

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// TestHealthCheckAnswer checks the healthCheckNodePort's answer against kube-proxy's
// (pkg/proxy/healthcheck/service_health.go, hcHandler.ServeHTTP), byte for byte.
func TestHealthCheckAnswer(t *testing.T) {
	name := types.NamespacedName{Namespace: "shop", Name: "web"}
	for _, tc := range []struct {
		desc         string
		count        int
		proxyHealthy bool
		wantCode     int
		wantBody     string
	}{
		{"local endpoints, healthy proxy", 2, true, http.StatusOK,
			"{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"},
		{"no local endpoint", 0, true, http.StatusServiceUnavailable,
			"{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 0,\n\t\"serviceProxyHealthy\": true\n}"},
		{"local endpoints, proxy not syncing", 3, false, http.StatusServiceUnavailable,
			"{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 3,\n\t\"serviceProxyHealthy\": false\n}"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			rec := httptest.NewRecorder()
			NewServiceHealth(klog.Background(), IPv4, "node-a", nil, nil).answer(rec, name, tc.count, tc.proxyHealthy)
			if rec.Code != tc.wantCode || rec.Body.String() != tc.wantBody {
				t.Errorf("got %d %q, want %d %q", rec.Code, rec.Body.String(), tc.wantCode, tc.wantBody)
			}
			want := map[string]string{"Content-Type": "application/json", "X-Content-Type-Options": "nosniff", "X-Load-Balancing-Endpoint-Weight": strconv.Itoa(tc.count)}
			for k, v := range want {
				if got := rec.Header().Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

// TestServiceHealthCountsAddresses: the local endpoint count a health check reports is of
// local ready addresses, each once however many ports of the Service it serves, as
// kube-proxy counts them (EndpointsMap.LocalReadyEndpoints).
func TestServiceHealthCountsAddresses(t *testing.T) {
	tp := newTestProxier(t)
	health := NewServiceHealth(klog.Background(), IPv4, "node-a", nil, func() bool { return true })
	tp.p.opts.ServiceHealth = health
	svcEvent(makeService("web", func(s *v1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "https", Port: 443, Protocol: v1.ProtocolTCP})
	}))(tp)
	notReady := readyEndpoint("10.0.0.4", "node-a")
	notReady.Conditions.Ready = ptr(false)
	sliceEvent(makeSlice("web", "web-1", []discovery.Endpoint{
		readyEndpoint("10.0.0.1", "node-a"), readyEndpoint("10.0.0.2", "node-a"), readyEndpoint("10.0.0.3", "node-b"), notReady,
	}, func(s *discovery.EndpointSlice) {
		s.Ports = append(s.Ports, discovery.EndpointPort{Name: ptr("https"), Port: ptr[int32](8443), Protocol: ptr(v1.ProtocolTCP)})
	}))(tp)
	tp.p.SetInitialized()
	if err := tp.p.sync(); err != nil {
		t.Fatalf("sync: %v", err)
	}
	if got := health.counts[nsName("web")]; got != 2 {
		t.Errorf("local endpoints of ns/web = %d, want 2 (two local ready pods, each serving both ports)", got)
	}
}

// fakeListener is a listener that accepts nothing until it is closed.
type fakeListener struct{ closed chan struct{} }

func (l fakeListener) Accept() (net.Conn, error) {
	<-l.closed
	return nil, net.ErrClosed
}
func (l fakeListener) Close() error   { close(l.closed); return nil }
func (l fakeListener) Addr() net.Addr { return &net.TCPAddr{} }

// TestServiceHealthListens: each family's servers listen on that family's sockets only,
// so that a dual-stack Service's two servers share the port (as kube-proxy's since
// kubernetes#137370); a port that cannot be opened gets kube-proxy's Warning Event on its
// Service and is tried again at every update, as kube-proxy tries at every sync, until
// it opens or its Service no longer wants it.
func TestServiceHealthListens(t *testing.T) {
	web, other := nsName("web"), nsName("other")
	inUse := errors.New("bind: address already in use")
	event := "Service ns/web Warning FailedToStartServiceHealthcheck node node-a failed to start healthcheck \"ns/web\" on port 30000: listen tcp: " + inUse.Error()
	type update struct {
		ports   map[types.NamespacedName]int32
		changed []types.NamespacedName
		// refuse is how many of the update's listens fail.
		refuse int
		// wantListens are the listens the update makes, wantEvents the Events.
		wantListens []string
		wantEvents  []string
	}
	tests := []struct {
		name    string
		family  Family
		updates []update
	}{
		{
			name:    "IPv4",
			family:  IPv4,
			updates: []update{{ports: map[types.NamespacedName]int32{web: 30000}, changed: []types.NamespacedName{web}, wantListens: []string{"tcp4 :30000"}}},
		},
		{
			name:    "IPv6",
			family:  IPv6,
			updates: []update{{ports: map[types.NamespacedName]int32{web: 30000}, changed: []types.NamespacedName{web}, wantListens: []string{"tcp6 :30000"}}},
		},
		{
			name:   "a port in use is tried again at every update until it opens",
			family: IPv4,
			updates: []update{
				{ports: map[types.NamespacedName]int32{web: 30000}, changed: []types.NamespacedName{web}, refuse: 1, wantListens: []string{"tcp4 :30000"}, wantEvents: []string{event}},
				{refuse: 1, wantListens: []string{"tcp4 :30000"}, wantEvents: []string{event}},
				{wantListens: []string{"tcp4 :30000"}},
				{},
			},
		},
		{
			name:   "a port in use is no longer tried once its Service is gone",
			family: IPv4,
			updates: []update{
				{ports: map[types.NamespacedName]int32{web: 30000}, changed: []types.NamespacedName{web}, refuse: 1, wantListens: []string{"tcp4 :30000"}, wantEvents: []string{event}},
				{changed: []types.NamespacedName{web}},
			},
		},
		{
			name:   "a port another Service holds",
			family: IPv4,
			updates: []update{
				{ports: map[types.NamespacedName]int32{other: 30000}, changed: []types.NamespacedName{other}, wantListens: []string{"tcp4 :30000"}},
				{ports: map[types.NamespacedName]int32{other: 30000, web: 30000}, changed: []types.NamespacedName{web},
					wantEvents: []string{"Service ns/web Warning FailedToStartServiceHealthcheck node node-a failed to start healthcheck \"ns/web\" on port 30000: health check port 30000 is ns/other's"}},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			events := &eventLog{}
			h := NewServiceHealth(klog.Background(), tc.family, "node-a", events, func() bool { return true })
			defer h.Close(context.Background())
			for i, u := range tc.updates {
				var listens []string
				refuse := u.refuse
				h.listen = func(network, address string) (net.Listener, error) {
					listens = append(listens, network+" "+address)
					if refuse > 0 {
						refuse--
						return nil, &net.OpError{Op: "listen", Net: "tcp", Err: inUse}
					}
					return fakeListener{closed: make(chan struct{})}, nil
				}
				events.events = nil
				h.Update(u.ports, nil, u.changed)
				if diff := cmp.Diff(u.wantListens, listens); diff != "" {
					t.Errorf("update %d: listens (-want +got):\n%s", i, diff)
				}
				if diff := cmp.Diff(u.wantEvents, events.events); diff != "" {
					t.Errorf("update %d: events (-want +got):\n%s", i, diff)
				}
			}
		})
	}
}
