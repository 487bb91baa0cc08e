"""The descriptor pool that holds Ferry's generated protocol types.

Ferry's messages keep Triton's package name (`inference`) for wire and reflection compatibility,
so they would clash with tritonclient's own generated copies in protobuf's default pool whenever
both are imported into one process (tests, load generators). scripts/generate_proto.sh points the
generated modules at this private pool instead.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
