package lakeforge;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonStreamContext;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.util.JsonParserDelegate;
import java.io.IOException;
import java.util.Arrays;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.GenericInternalRow;
import org.apache.spark.sql.catalyst.json.CreateJacksonParser;
import org.apache.spark.sql.catalyst.json.JSONOptions;
import org.apache.spark.sql.catalyst.json.JacksonParser;
import org.apache.spark.sql.catalyst.util.FailureSafeParser;
import org.apache.spark.sql.catalyst.util.GenericArrayData;
import org.apache.spark.sql.catalyst.util.PermissiveMode$;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.unsafe.Platform;
import org.apache.spark.unsafe.types.UTF8String;

/**
 * Ingest's JSON lines checked and parsed in one pass. Each line goes through the parser `from_json` uses (Spark's
 * JacksonParser inside its FailureSafeParser, PERMISSIVE), so the typed values, partial results and corrupt-record
 * column are exactly from_json's. The Jackson tokens are watched on their way to it, so the same pass also lists the
 * top-level keys the schema does not declare (as `json_object_keys` would, without a second parse) and sees whether
 * more than white space follows the object (Spark stops at the end of the first value). The cheap byte tests
 * before the parse (blank, too large, UTF-8, an object) run in the same loop. Called from lakeforge.ingest through
 * py4j, whose all-Spark path computes the same columns; built by `lakeforge setup-jars` against the installed Spark.
 */
public final class JsonLines {
  private JsonLines() {}

  /** Why a line is not parsed (the `flaw` column): the numbers of lakeforge.ingest's constants of the same names. */
  static final int TOO_LARGE = 1;
  static final int NOT_UTF8 = 2;
  static final int NOT_AN_OBJECT = 3;

  /** A Jackson parser that records the top-level field names declared in no spelling (`declared` as spelled, then
   *  `lowered` in lower case) and, when it is closed after the whole root value was read, whether anything but
   *  white space follows. */
  static final class Watched extends JsonParserDelegate {
    private final Set<String> declared;
    private final Set<String> lowered;
    private Set<String> other;
    private boolean complete;
    private boolean trailing;

    Watched(JsonParser parser, Set<String> declared, Set<String> lowered) {
      super(parser);
      this.declared = declared;
      this.lowered = lowered;
    }

    @Override
    public JsonToken nextToken() throws IOException {
      JsonToken token = delegate.nextToken();
      if (token == JsonToken.FIELD_NAME) {
        JsonStreamContext object = delegate.getParsingContext();
        if (object.getParent() != null && object.getParent().inRoot()) {
          String name = delegate.currentName();
          if (!declared.contains(name) && !lowered.contains(name.toLowerCase(Locale.ROOT))) {
            if (other == null) {
              other = new LinkedHashSet<>();
            }
            other.add(name);
          }
        }
      }
      return token;
    }

    @Override
    public String nextFieldName() throws IOException {  // through nextToken, so no key goes unseen
      return nextToken() == JsonToken.FIELD_NAME ? delegate.currentName() : null;
    }

    @Override
    public void close() throws IOException {
      // Back at the root once the whole value was read; a syntax error leaves the parser inside it.
      complete = !delegate.isClosed() && delegate.currentToken() != null && delegate.getParsingContext().inRoot();
      if (complete) {
        try {
          trailing = delegate.nextToken() != null;
        } catch (IOException notJson) {
          trailing = true;
        }
      }
      delegate.close();
    }

    /** The undeclared keys of a line that parses as JSON (null when none, or when it does not parse). */
    GenericArrayData newKeys() {
      if (!complete || other == null) {
        return null;
      }
      return new GenericArrayData(other.stream().map(UTF8String::fromString).toArray());
    }
  }

  /** Java's regex `\s`: what `^\s*$` (blank) and `^\s*\{` (an object) skip. */
  private static boolean space(byte b) {
    return b == ' ' || b == '\t' || b == '\n' || b == 0x0B || b == '\f' || b == '\r';
  }

  /** The first byte that is not white space (0 to 255), or -1 when the line is blank. */
  static int firstNonSpace(UTF8String line) {
    Object base = line.getBaseObject();
    long offset = line.getBaseOffset();
    for (int i = 0; i < line.numBytes(); i++) {
      byte b = Platform.getByte(base, offset + i);
      if (!space(b)) {
        return b & 0xFF;
      }
    }
    return -1;
  }

  /**
   * A Jackson parser over the line's UTF-8 bytes, as Spark's JSON reader makes it (`CreateJacksonParser.text`), which
   * reads faster than the character reader `from_json` puts in front (`CreateJacksonParser.utf8String`). The line is
   * valid UTF-8 (tested before), so both read the same text; but Jackson takes a zero byte among the first four as
   * the mark of UTF-16 or UTF-32, so such a line takes from_json's way. The bytes start their own array: Spark
   * copies a number read into a string column from the array at the token's offsets, which Jackson counts from the
   * start it is given.
   */
  static JsonParser jacksonParser(JsonFactory factory, UTF8String line) {
    byte[] bytes = line.getBytes();  // the row's own array when the line fills it, else a copy
    for (int i = 0; i < Math.min(bytes.length, 4); i++) {
      if (bytes[i] == 0) {
        return CreateJacksonParser.utf8String(factory, line);
      }
    }
    try {
      return factory.createParser(bytes, 0, bytes.length);
    } catch (IOException impossible) {  // no input is read to make a parser over an array
      throw new java.io.UncheckedIOException(impossible);
    }
  }

  /**
   * `lines` without its blank lines (white space only: not records), with four columns more: `record`, the struct
   * from_json makes of column `input` with `schema` (JSON; its field `corrupt` holds the line of a record that does
   * not parse), `new_keys`, the top-level keys of a line that parses which `declared` spells in no case (null when
   * none), `trailing`, true when more than white space follows the first JSON value, and `flaw`, why a line is not
   * parsed: longer than `maxBytes` (TOO_LARGE), not UTF-8 (NOT_UTF8) or not starting with `{` (NOT_AN_OBJECT);
   * null for the lines parsed. A null line is not parsed either.
   */
  public static Dataset<Row> parse(Dataset<Row> lines, String input, String schema, Map<String, String> options,
                                   String timeZone, String corrupt, List<String> declared, long maxBytes) {
    StructType recordType = (StructType) StructType.fromJson(schema);
    StructType in = lines.schema();
    StructField[] fields = in.fields();
    int at = in.fieldIndex(input);
    StructType out = in.add("record", recordType)
        .add("new_keys", DataTypes.createArrayType(DataTypes.StringType))
        .add("trailing", DataTypes.BooleanType)
        .add("flaw", DataTypes.IntegerType);
    scala.collection.immutable.Map<String, String> scalaOptions =
        scala.collection.immutable.Map$.MODULE$.from(scala.jdk.javaapi.CollectionConverters.asScala(options));
    Set<String> names = new HashSet<>(declared);
    Set<String> lowered = new HashSet<>();
    declared.forEach(name -> lowered.add(name.toLowerCase(Locale.ROOT)));
    org.apache.spark.rdd.RDD<InternalRow> rows = ((org.apache.spark.sql.classic.Dataset<Row>) lines)
        .queryExecution().toRdd().toJavaRDD().mapPartitions((Iterator<InternalRow> it) -> {
          JSONOptions parsed = new JSONOptions(scalaOptions, timeZone, corrupt);
          StructType typed = new StructType(Arrays.stream(recordType.fields())
              .filter(f -> !f.name().equals(corrupt)).toArray(StructField[]::new));
          JacksonParser jackson = new JacksonParser(typed, parsed, false, JacksonParser.$lessinit$greater$default$4());
          Watched[] watched = new Watched[1];
          scala.Function2<JsonFactory, UTF8String, JsonParser> open = (factory, line) -> {
            watched[0] = new Watched(jacksonParser(factory, line), names, lowered);
            return watched[0];
          };
          scala.Function1<UTF8String, UTF8String> asText = line -> line;
          FailureSafeParser<UTF8String> parser = new FailureSafeParser<>(
              line -> jackson.parse(line, open, asText), PermissiveMode$.MODULE$, recordType, corrupt);
          return new Iterator<InternalRow>() {
            private InternalRow ahead;  // the next line that is not blank
            private int aheadFirst;  // its first byte that is not white space (-1 for a null line)

            @Override
            public boolean hasNext() {
              while (ahead == null && it.hasNext()) {
                InternalRow row = it.next();
                boolean none = row.isNullAt(at);
                int first = none ? -1 : firstNonSpace(row.getUTF8String(at));
                if (none || first != -1) {
                  ahead = row.copy();  // the scan reuses its row: keep this one's strings
                  aheadFirst = first;
                }
              }
              return ahead != null;
            }

            @Override
            public InternalRow next() {
              if (!hasNext()) {
                throw new java.util.NoSuchElementException();
              }
              InternalRow row = ahead;
              ahead = null;
              Object[] values = new Object[fields.length + 4];
              for (int i = 0; i < fields.length; i++) {
                values[i] = row.get(i, fields[i].dataType());
              }
              UTF8String line = row.isNullAt(at) ? null : row.getUTF8String(at);
              if (line == null) {
                return new GenericInternalRow(values);
              }
              if (line.numBytes() > maxBytes) {
                values[fields.length + 3] = TOO_LARGE;
              } else if (!line.isValid()) {
                values[fields.length + 3] = NOT_UTF8;
              } else if (aheadFirst != '{') {
                values[fields.length + 3] = NOT_AN_OBJECT;
              } else {
                watched[0] = null;
                scala.collection.Iterator<InternalRow> record = parser.parse(line);
                values[fields.length] = record.hasNext() ? record.next().copy() : null;
                if (watched[0] != null) {
                  values[fields.length + 1] = watched[0].newKeys();
                  values[fields.length + 2] = watched[0].trailing;
                }
              }
              return new GenericInternalRow(values);
            }
          };
        }).rdd();
    return ((org.apache.spark.sql.classic.SparkSession) lines.sparkSession()).internalCreateDataFrame(rows, out, false);
  }
}
