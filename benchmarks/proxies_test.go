package benchmarks

import (
	"math"
	"testing"
)

func TestCumulativeQuantile(t *testing.T) {
	tests := []struct {
		name string
		h    cumulative
		q    float64
		want float64
	}{
		{
			name: "interpolates inside the bucket holding the rank",
			h:    cumulative{bounds: []float64{0.1, 0.2, math.Inf(1)}, counts: []float64{0, 10, 10}, count: 10},
			q:    0.5,
			want: 0.15,
		},
		{
			name: "first bucket interpolates from zero",
			h:    cumulative{bounds: []float64{1, 2, math.Inf(1)}, counts: []float64{4, 4, 4}, count: 4},
			q:    0.5,
			want: 0.5,
		},
		{
			name: "rank in the +Inf bucket reports the highest finite bound",
			h:    cumulative{bounds: []float64{0.1, 0.2, math.Inf(1)}, counts: []float64{1, 2, 10}, count: 10},
			q:    0.99,
			want: 0.2,
		},
		{
			name: "no buckets",
			h:    cumulative{count: 1},
			q:    0.5,
			want: math.NaN(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.h.quantile(tt.q)
			if math.IsNaN(tt.want) != math.IsNaN(got) || (!math.IsNaN(got) && math.Abs(got-tt.want) > 1e-9) {
				t.Errorf("quantile(%v) = %v, want %v", tt.q, got, tt.want)
			}
		})
	}
}

func TestCumulativeMinus(t *testing.T) {
	before := cumulative{bounds: []float64{1, math.Inf(1)}, counts: []float64{2, 3}, count: 3, sum: 4}
	after := cumulative{bounds: []float64{1, math.Inf(1)}, counts: []float64{5, 9}, count: 9, sum: 20}
	d := after.minus(before)
	if d.count != 6 || d.sum != 16 || d.counts[0] != 3 || d.counts[1] != 6 {
		t.Errorf("minus = %+v, want count 6, sum 16, counts [3 6]", d)
	}
	if before.counts[0] != 2 {
		t.Errorf("minus changed its argument: %+v", before)
	}
}
