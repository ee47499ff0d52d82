package proxier

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

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
			NewServiceHealth(klog.Background(), IPv4, nil).answer(rec, name, tc.count, tc.proxyHealthy)
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
	health := NewServiceHealth(klog.Background(), IPv4, func() bool { return true })
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
