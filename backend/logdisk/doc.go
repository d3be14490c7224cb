// Package logdisk is a log-structured block device kept in an object
// store: the engine behind nbdd's S3 exports. It speaks to the store
// through the small Store interface (put-if-absent, ranged read, delete,
// list), so it imports no client library; package s3store implements
// Store on S3, and MemStore implements it in memory for tests.
//
// Writes are appended to a local journal file, which becomes the data of
// an immutable, numbered segment object once sealed (by size or by FLUSH).
// An in-memory map from export offset to (segment, offset) answers reads
// and block status; it is checkpointed to objects now and then, so opening
// an image reads the latest checkpoint and only the headers of the log
// objects after it. FLUSH and FUA return once every write before them is
// in the store.
//
// One writer at a time: a writer claims an epoch by writing claim objects
// with put-if-absent at the next sequence numbers, deciding every number up
// to its first claim plus the window, so an old writer's uploads in flight
// either land before the claim (and are read by the taker) or collide (412)
// and fence the old writer, which then fails every request. Readers apply
// log objects in sequence order and ignore one whose epoch is below an epoch
// already seen. None of it depends on clocks. docs/s3.md describes the
// layout and the rules.
package logdisk
