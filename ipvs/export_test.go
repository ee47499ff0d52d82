package ipvs

// The chains of the rules the backend writes, for the external tests (package ipvs_test)
// that read those rules back from a fake.
const (
	FilterChain    = ipvsFilterChain
	OutFilterChain = ipvsOutFilterChain
)
