"""What the readers rebuild when one small part of a member is damaged; nothing is written back.

Why (issue 24): a member is a few small vital parts around its chunk records (header,
manifest, index, footer, trailer), and one flipped byte in one of them used to cost the whole
member, though each can be rebuilt from something else that is checked on its own:

* the header from its copy at HEADER_COPY_OFFSET (``MemberReader._read_header``); with no sound
  copy (a member written before the copy existed, or a whole 4 KiB block lost), from another
  given member's header of the same dump (the geometry is the dump's) and this member's own
  parts: its manifest record names its dump (``manifest_id``), its trailer or its footer
  says which member it is and whether it finished, or else its chunk records do (chunk i is on
  member i mod members: ``MemberReader.own_place``): ``rebuild_header``;
* the manifest from any other member, where the record is byte-identical: ``pick_manifest``;
* the footer and the index from a walk of the records (each describes itself), when the member
  says it finished: ``DumpSet.source``.

Each rebuilt part is bound to this dump by its dump id and checksums, as the parts it stands
for; records are checked as always, so a repair never lets another dump's bytes in.  It all
happens in memory, for reading: the members are never written.  What was repaired is told
(``MemberReader.damage``, ``DumpSet.repairs``): join and mount warn, verify exits 12.

This module takes the member readers as they are given (``read.member``'s, not imported:
it sits below the dump set, beside the member reader).
"""

from __future__ import annotations

import uuid

from ..errors import MemberError
from ..format.structs import FEATURE_STREAMED, STATE_WRITING, RecordHead


def rebuild_headers(damaged: list, readers: list, allow_missing: bool, unread: list) -> None:
    """Members whose header and its copy are damaged (``header`` None), rebuilt from the others.

    Those rebuilt join ``readers``.  One that cannot be rebuilt is an error that says what
    works; with ``allow_missing`` it is left out (``unread``: (path, why)) and the others go on.
    """
    for r in damaged:
        why = rebuild_header(r, readers)
        if why is None:
            readers.append(r)
            continue
        r.close()
        if allow_missing:
            unread.append((r.path, f"{str(r.header_error).split(': ', 1)[-1]}; {why}"))
            continue
        give = "give the dump's other members too (its header is rebuilt from theirs)" \
            if why.startswith("no other member") else ""
        skip = "run the same command with --allow-incomplete, which goes on without it (it may stay " \
            "on the command line)" if readers or not give else ""
        raise MemberError(f"{r.header_error}; {why}: {give}{', or ' if give and skip else ''}{skip}")


def rebuild_header(r, readers: list) -> str | None:
    """Give ``r`` (a MemberReader whose header and copy failed: ``r.header`` None) a header
    rebuilt from another member of its dump and its own parts.  None when done, else why not."""
    did = r.manifest_id()
    if did is None:
        return "its manifest record cannot be read either, so nothing says which dump it belongs to"
    kin = [x for x in readers if x.header is not None and x.header.dump_id == did and x.version >= 2]
    if not kin:
        return f"no other member of its dump ({uuid.UUID(bytes=did)}) was given to rebuild it from"
    t = kin[0].header
    if RecordHead.STRUCT.size + RecordHead.STRUCT.unpack(r.pread(t.manifest_offset, RecordHead.STRUCT.size))[1] \
            != t.manifest_length:
        return f"its manifest record differs from that of {kin[0].path}"
    r.use_header(t._replace(member_index=0, state=STATE_WRITING, footer_offset=0, footer_length=0,
                            features_optional=t.features_optional & ~FEATURE_STREAMED))
    found = r.own_place(t.member_count)
    if isinstance(found, str):
        r.use_header(None)
        return found
    header, how = found
    r.use_header(header)
    r.damage.append(f"{str(r.header_error).split(': ', 1)[-1]}; rebuilt from the header of {kin[0].path} "
                    f"(the dump's geometry) and {how}")
    return None


def pick_manifest(readers: list, allow_missing: bool, unusable: dict):
    """The member whose manifest is read (the first sound one), and the readers kept.

    The manifest record is byte-identical in every member of a dump.  A member whose record
    differs: if its own record is sound, it is kept (the dump set's check then names the
    difference); if it is damaged, the reference's copy stands in for it (noted in its
    ``damage``); if it is cut off (the dump stopped while writing its head, or the file was cut
    short), it counts as missing with ``allow_missing`` (``unusable``: member index -> (path,
    why)) and is an error without.
    """
    ref, first = None, None
    for r in readers:
        try:
            r.manifest()
            ref = r
            break
        except MemberError as e:
            first = first or e
    if ref is None:
        raise first
    rh = ref.header
    ref_bytes = ref.pread(rh.manifest_offset, rh.manifest_length)
    keep = []
    for r in readers:
        h = r.header
        fits = h.manifest_offset + h.manifest_length <= r.size and h.manifest_length == rh.manifest_length \
            and r.dump_id == ref.dump_id
        if r is ref or (fits and r.pread(h.manifest_offset, h.manifest_length) == ref_bytes):
            keep.append(r)
            continue
        try:
            r.manifest()
        except MemberError as e:
            why = str(e).split(": ", 1)[-1].split("; join the other members")[0]
            if fits:
                r.adopt_manifest(ref)
                r.damage.append(f"{why.split('; ')[0]}; the identical copy in {ref.path} was used")
                keep.append(r)
                continue
            if not allow_missing:
                raise
            unusable[h.member_index] = (r.path, why)
            r.close()
            continue
        keep.append(r)
    return ref, keep
