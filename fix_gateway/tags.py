"""FIX 4.4 tag numbers, message types and enumerations used by the gateway (FIX 4.4 Vol. 2-3)."""

from __future__ import annotations

from typing import Final

SOH: Final = b"\x01"
BEGIN_STRING: Final = "FIX.4.4"

# standard header / trailer
BeginString: Final = 8
BodyLength: Final = 9
MsgType: Final = 35
SenderCompID: Final = 49
TargetCompID: Final = 56
MsgSeqNum: Final = 34
SendingTime: Final = 52
PossDupFlag: Final = 43
PossResend: Final = 97
OrigSendingTime: Final = 122
CheckSum: Final = 10

# session messages
EncryptMethod: Final = 98
HeartBtInt: Final = 108
ResetSeqNumFlag: Final = 141
RawDataLength: Final = 95
RawData: Final = 96
Username: Final = 553
Password: Final = 554
TestReqID: Final = 112
BeginSeqNo: Final = 7
EndSeqNo: Final = 16
NewSeqNo: Final = 36
GapFillFlag: Final = 123
RefSeqNum: Final = 45
RefTagID: Final = 371
RefMsgType: Final = 372
SessionRejectReason: Final = 373
Text: Final = 58
BusinessRejectRefID: Final = 379
BusinessRejectReason: Final = 380

# market data
Symbol: Final = 55
SecurityReqID: Final = 320
SecurityListRequestType: Final = 559
SecurityResponseID: Final = 322
SecurityRequestResult: Final = 560
TotNoRelatedSym: Final = 393
LastFragment: Final = 893
NoRelatedSym: Final = 146
Currency: Final = 15
MinTradeVol: Final = 562
RoundLot: Final = 561
SecurityDesc: Final = 107
SecurityExchange: Final = 207
MinPriceIncrement: Final = 969
MDReqID: Final = 262
SubscriptionRequestType: Final = 263
MarketDepth: Final = 264
MDUpdateType: Final = 265
AggregatedBook: Final = 266
NoMDEntryTypes: Final = 267
NoMDEntries: Final = 268
MDEntryType: Final = 269
MDEntryPx: Final = 270
MDEntrySize: Final = 271
MDEntryDate: Final = 272
MDEntryTime: Final = 273
MDUpdateAction: Final = 279
MDReqRejReason: Final = 281
RptSeq: Final = 83
TradeCondition: Final = 277
Side: Final = 54

# MsgType(35) values
HEARTBEAT: Final = "0"
TEST_REQUEST: Final = "1"
RESEND_REQUEST: Final = "2"
REJECT: Final = "3"
SEQUENCE_RESET: Final = "4"
LOGOUT: Final = "5"
LOGON: Final = "A"
BUSINESS_REJECT: Final = "j"
SECURITY_LIST_REQUEST: Final = "x"
SECURITY_LIST: Final = "y"
MARKET_DATA_REQUEST: Final = "V"
MARKET_DATA_SNAPSHOT: Final = "W"
MARKET_DATA_INCREMENTAL: Final = "X"
MARKET_DATA_REQUEST_REJECT: Final = "Y"

# Every MsgType(35) FIX 4.4 defines (Vol. 6 appendix); a type outside this set is Reject(3) 373=11,
# a defined one we do not serve is BusinessMessageReject(j) 380=3.
FIX44_TYPES: Final = frozenset(
    "0 1 2 3 4 5 6 7 8 9 A AA AB AC AD AE AF AG AH AI AJ AK AL AM AN AO AP AQ AR AS AT AU AV AW AX AY AZ "  # noqa: SIM905 - as printed
    "B BA BB BC BD BE BF BG BH C D E F G H J K L M N P Q R S T V W X Y Z "
    "a b c d e f g h i j k l m o p q r s t u v w x y z".split()
)
ADMIN_TYPES: Final = frozenset(
    {HEARTBEAT, TEST_REQUEST, RESEND_REQUEST, REJECT, SEQUENCE_RESET, LOGOUT, LOGON}
)

# SessionRejectReason(373)
REJ_INVALID_TAG = 0
REJ_REQUIRED_TAG_MISSING = 1
REJ_TAG_NOT_DEFINED = 2
REJ_UNDEFINED_TAG = 3
REJ_TAG_WITHOUT_VALUE = 4
REJ_VALUE_INCORRECT = 5
REJ_INCORRECT_FORMAT = 6
REJ_SIGNATURE = 8
REJ_COMPID = 9
REJ_SENDING_TIME = 10
REJ_INVALID_MSGTYPE = 11
REJ_TAG_REPEATED = 13
REJ_OUT_OF_ORDER = 14
REJ_GROUP_COUNT = 16

# MDReqRejReason(281)
MDREJ_UNKNOWN_SYMBOL = "0"
MDREJ_DUPLICATE_ID = "1"
MDREJ_UNSUPPORTED_SUBSCRIPTION = "4"
MDREJ_UNSUPPORTED_DEPTH = "5"
MDREJ_UNSUPPORTED_UPDATE_TYPE = "6"
MDREJ_UNSUPPORTED_ENTRY_TYPE = "8"

# MDEntryType(269)
ENTRY_BID = "0"
ENTRY_OFFER = "1"
ENTRY_TRADE = "2"

# MDUpdateAction(279)
ACTION_NEW = "0"
ACTION_CHANGE = "1"
ACTION_DELETE = "2"
