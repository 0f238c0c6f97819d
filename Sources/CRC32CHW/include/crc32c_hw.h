// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of a byte range: the SSE4.2 `crc32`
// instruction where the CPU has it (x86-64, checked once at run time), else a table, byte by byte.
// The preference log's records and FetchWeights' chunks are checked with it (PreferenceLog.CRC32C).
#pragma once
#include <stddef.h>
#include <stdint.h>

/// Continues a running CRC: `crc` is the value returned for the bytes before (0 to start).
uint32_t selm_crc32c_update(uint32_t crc, const void *data, size_t n);
