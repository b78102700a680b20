/* The SHA-256 of walker.c this library was built from (setup.py defines NW_WALKER_SHA256):
 * cwalk.py compares it with walker.c beside it, so a rebuilt-needed library is never loaded. */
#ifndef NW_WALKER_SHA256
#define NW_WALKER_SHA256 ""
#endif
const char nw_walker_sha256[] = NW_WALKER_SHA256;
