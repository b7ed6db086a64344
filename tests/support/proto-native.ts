// Typed view of the C++ IBNBD codec (native/testing/proto_binding.cc, in the test addon). It exists so tests can hold the
// data path's codec (native/proto/ibnbd_proto.h) to the same golden vectors as src/proto/ibnbd.ts;
// the control path uses the TS codec directly.
import { loadTestAddon } from '../../harness/test-addon.js';
import { toIbnbdError, isErrnoName, type ErrnoName } from '../../src/errors.js';
import { ProtocolError, type DecodeResult, type Message, type MsgTypeName } from '../../src/proto/ibnbd.js';

export interface NativeProtoSizes {
  hdr: number;
  sessInfo: number;
  open: number;
  openRsp: number;
  close: number;
  io: number;
  ioV1: number;
  nameMax: number;
  protoVerMajor: number;
}

type NativeError = { error: string; field: string };

interface NativeProto {
  decode(buf: Uint8Array): Message | NativeError;
  decodeAs(buf: Uint8Array, type: MsgTypeName): Message | NativeError;
  encode(msg: Message, version?: number): Buffer;
  peek(buf: Uint8Array): MsgTypeName | NativeError;
  frameSize(buf: Uint8Array, version: number): number | NativeError;
  sizes: NativeProtoSizes;
}

function proto(): NativeProto {
  return loadTestAddon<{ proto: NativeProto }>().proto;
}

function toProtocolError(r: NativeError): ProtocolError {
  const code: ErrnoName = isErrnoName(r.error) ? r.error : 'EIO';
  return new ProtocolError(code, r.field, 'rejected by the C++ codec');
}

/** decode() of the C++ codec, with the TS codec's result shape. */
export function nativeDecode(buf: Uint8Array): DecodeResult {
  const r = proto().decode(buf);
  return 'error' in r ? { ok: false, error: toProtocolError(r) } : { ok: true, msg: r };
}

/** The C++ typed decoder of `type` (DecodeIo, DecodeOpen, ...), as the data path calls it. */
export function nativeDecodeAs(buf: Uint8Array, type: MsgTypeName): DecodeResult {
  const r = proto().decodeAs(buf, type);
  return 'error' in r ? { ok: false, error: toProtocolError(r) } : { ok: true, msg: r };
}

/** encode() of the C++ codec: throws an IbnbdError whose .code is the errno name. */
export function nativeEncode(msg: Message, options: { version?: number } = {}): Buffer {
  try {
    return proto().encode(msg, options.version);
  } catch (e) {
    throw toIbnbdError(e);
  }
}

export function nativePeek(buf: Uint8Array): { ok: true; type: MsgTypeName } | { ok: false; error: ProtocolError } {
  const r = proto().peek(buf);
  return typeof r === 'string' ? { ok: true, type: r } : { ok: false, error: toProtocolError(r) };
}

/** C++ FrameSize: the size of the message whose header starts `buf` (IO by `version`). */
export function nativeFrameSize(buf: Uint8Array, version: number): { ok: true; size: number } | { ok: false; error: ProtocolError } {
  const r = proto().frameSize(buf, version);
  return typeof r === 'number' ? { ok: true, size: r } : { ok: false, error: toProtocolError(r) };
}

export function nativeProtoSizes(): NativeProtoSizes {
  return proto().sizes;
}
